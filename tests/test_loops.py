"""``letsfrag.loops``: a supervised loop restarts after a crash, and ``cancel_and_wait`` stops a task even when a
library swallowed its first cancellation (the teardown hang CI met on 3.11 came from a wait on such a task)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from letsfrag.loops import cancel_and_wait, supervised


async def test_a_task_that_swallows_the_first_cancel_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what 3.11's wait_for does when the inner future finished at the same moment

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, wait=0.05), timeout=5)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_never_ends_is_left_with_a_warning_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf(), name="deaf-task")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="letsfrag.loops"):
        await asyncio.wait_for(cancel_and_wait(task, attempts=3, wait=0.02), timeout=5)
    assert not task.done()
    assert "task deaf-task did not end after 3 cancellations" in caplog.text
    release.set()
    await task


async def test_finished_tasks_and_none_are_skipped_and_their_errors_consumed() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    await asyncio.wait({failed})
    await cancel_and_wait(None, failed)  # no raise: the caller is stopping them
    assert isinstance(failed.exception(), RuntimeError)


async def test_the_calling_task_is_never_cancelled_by_its_own_stop() -> None:
    """A loop that stops its siblings and itself (the supervisor's stop runs in one of its own tasks) goes on
    after the call: it is not cancelled, and it does not wait for itself."""
    reached: list[str] = []
    siblings: list[asyncio.Task[None]] = []

    async def sibling() -> None:
        await asyncio.Event().wait()

    async def stopper() -> None:
        await cancel_and_wait(*siblings, asyncio.current_task(), wait=0.05)
        await asyncio.sleep(0)  # an await after the call: a self-cancel would raise here
        reached.append("after")

    siblings.append(asyncio.create_task(sibling()))
    task = asyncio.create_task(stopper())
    await asyncio.wait_for(task, timeout=5)
    assert reached == ["after"] and siblings[0].cancelled() and not task.cancelled()


async def test_supervised_restarts_a_loop_that_raised_and_returns_when_it_returns() -> None:
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise ValueError(f"crash {runs}")

    crashes: list[str] = []
    await asyncio.wait_for(supervised("demo", run, logger=logging.getLogger("test"),
                                      on_crash=lambda name, exc: crashes.append(f"{name}: {exc}"),
                                      delay=0.01, max_delay=0.02), timeout=5)
    assert runs == 3 and crashes == ["demo: crash 1", "demo: crash 2"]
