"""Small helpers shared by the tests: waiting for conditions with a deadline, never sleeping blindly."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any


def time_scale() -> float:
    """How much slower than a quiet 2-core machine this one is allowed to be (``LETSFRAG_TEST_TIME_SCALE``).

    Every deadline of :func:`wait_until` / :func:`wait_until_sync` is multiplied by it, and every other deadline
    or slack of the tests goes through :func:`scaled`, so a busy CI machine can run the suite with e.g.
    ``LETSFRAG_TEST_TIME_SCALE=2`` without editing a test. Default 1. A bound that is the property under test (a
    cluster stops before its lease expires) is not scaled: it holds on a busy machine or the product is wrong.
    """
    try:
        value = float(os.environ.get("LETSFRAG_TEST_TIME_SCALE", "1"))
    except ValueError:
        return 1.0
    return value if 1.0 <= value <= 100.0 else 1.0


def scaled(seconds: float) -> float:
    """``seconds`` × :func:`time_scale`: for every deadline or slack in a test that is not a :func:`wait_until`
    timeout (a process wait, ``asyncio.wait_for``, the upper bound of a measured duration)."""
    return seconds * time_scale()


async def wait_until(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value; fail after ``timeout`` (scaled)."""
    timeout *= time_scale()
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {message} (last value: {last!r})")
        await asyncio.sleep(interval)


def wait_until_sync(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, message: str = "condition"
) -> Any:
    """The blocking twin of :func:`wait_until`."""
    timeout *= time_scale()
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {message} (last value: {last!r})")
        time.sleep(interval)
