"""Core loops that never die silently: :func:`supervised` restarts a loop that raised, after logging it.

Every long-lived task of the broker and the supervisor (lease, publish, tick, decision loop, broker tick) runs
inside :func:`supervised`. An unexpected exception is logged with its traceback, reported to ``on_crash``
(which records an event) and the loop is started again after a short backoff (doubling up to ``max_delay``,
back to ``delay`` once a run lasted a minute). Cancellation passes through; a loop that returns is done.

:func:`cancel_and_wait` is how every owner of a task stops it: cancel, wait, and cancel again when a library
swallowed the cancellation (3.11's ``wait_for`` and aiohttp's timeouts can turn it into a return or an ordinary
exception), so a close never waits forever on a task that kept running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["CrashHandler", "cancel_and_wait", "supervised"]

#: a run that lasted this long resets the restart backoff
HEALTHY_AFTER = 60.0

CrashHandler = Callable[[str, BaseException], object]

log = logging.getLogger(__name__)


async def supervised(name: str, run: Callable[[], Awaitable[None]], *, logger: logging.Logger,
                     on_crash: CrashHandler | None = None, delay: float = 0.2, max_delay: float = 5.0) -> None:
    """Run ``await run()`` until it returns; when it raises, log the traceback, call ``on_crash(name, exc)``
    and run it again after the backoff."""
    loop = asyncio.get_running_loop()
    wait = delay
    while True:
        started = loop.time()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if loop.time() - started >= HEALTHY_AFTER:
                wait = delay
            logger.error("%s crashed (%s: %s); restarting it in %.1fs", name, type(exc).__name__, exc, wait,
                         exc_info=exc)
            if on_crash is not None:
                try:
                    result = on_crash(name, exc)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    logger.exception("%s: reporting the crash failed", name)
        await asyncio.sleep(wait)
        wait = min(wait * 2, max_delay)


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None, attempts: int = 10, wait: float = 1.0) -> None:
    """Cancel each of ``tasks`` (``None`` and finished ones are skipped) and wait until they have ended; a task
    still running ``wait`` seconds after a cancel is cancelled again, up to ``attempts`` times, then left with
    a warning naming it. Their results and exceptions are consumed: the caller is stopping them.

    The calling task itself is skipped when it is among ``tasks`` (a loop that stops its siblings): cancelling
    itself would end the caller's own stop at its next ``await``."""
    current = asyncio.current_task()
    pending = {task for task in tasks if task is not None and task is not current}
    for _ in range(attempts):
        running = {task for task in pending if not task.done()}
        if not running:
            break
        for task in running:
            task.cancel()
        await asyncio.wait(running, timeout=wait)
    for task in pending:
        if not task.done():
            name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
            log.warning("task %s did not end after %d cancellations; leaving it", name, attempts)
        elif not task.cancelled():
            with contextlib.suppress(BaseException):
                task.result()
