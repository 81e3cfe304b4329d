"""Core loops that never die silently: :func:`supervised` restarts a loop that raised, after logging it.

Every long-lived task of the broker and the supervisor (lease, publish, tick, decision loop, broker tick) runs
inside :func:`supervised`. An unexpected exception is logged with its traceback, reported to ``on_crash``
(which records an event) and the loop is started again after a short backoff (doubling up to ``max_delay``,
back to ``delay`` once a run lasted a minute). Cancellation passes through; a loop that returns is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["CrashHandler", "supervised"]

#: a run that lasted this long resets the restart backoff
HEALTHY_AFTER = 60.0

CrashHandler = Callable[[str, BaseException], object]


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
