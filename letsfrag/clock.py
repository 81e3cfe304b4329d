"""One injectable clock: the system's in production, a fake one that tests advance instantly.

A clock reads the time and runs timers on it (:meth:`Clock.call_later`, :meth:`Clock.sleep`): the system clock on
the event loop, the fake one when a test advances it past their due time (:meth:`FakeClock.advance`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "FakeTimer", "SystemClock", "Timer"]


class Timer(Protocol):
    """A pending call of :meth:`Clock.call_later` (:class:`asyncio.TimerHandle` is one)."""

    def cancel(self) -> None:
        """Do not call it (no effect once it ran)."""
        ...


@runtime_checkable
class Clock(Protocol):
    """Where decisions read the time from, and where their timers run."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for timeouts and intervals)."""
        ...

    def time(self) -> float:
        """Wall-clock time in epoch seconds (for timestamps shown to people)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Call ``callback`` once ``delay`` seconds passed on this clock (from the running event loop)."""
        ...

    async def sleep(self, delay: float) -> None:
        """Return once ``delay`` seconds passed on this clock."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.time`; timers on the running event loop."""

    def monotonic(self) -> float:
        """Return :func:`time.monotonic`."""
        return time.monotonic()

    def time(self) -> float:
        """Return :func:`time.time`."""
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """The running loop's :meth:`~asyncio.loop.call_later`."""
        return asyncio.get_running_loop().call_later(delay, callback)

    async def sleep(self, delay: float) -> None:
        """:func:`asyncio.sleep`."""
        await asyncio.sleep(delay)

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeTimer:
    """A pending call on a :class:`FakeClock`."""

    def __init__(self, due: float, callback: Callable[[], object]) -> None:
        self.due = due
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not call it."""
        self.cancelled = True


class FakeClock:
    """A clock that only moves when told to; both readings advance together, and :meth:`advance` runs the
    timers that fell due on the way, in order, each with the clock at its due time."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._monotonic = float(start)
        self._wall = float(wall)
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        """Return the fake monotonic reading."""
        return self._monotonic

    def time(self) -> float:
        """Return the fake wall-clock reading."""
        return self._wall

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        """Call ``callback`` when :meth:`advance` reaches ``delay`` seconds from now (at once: ``advance(0)``)."""
        timer = FakeTimer(self._monotonic + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.due, next(self._order), timer))
        return timer

    async def sleep(self, delay: float) -> None:
        """Return once :meth:`advance` passed ``delay`` seconds (``delay <= 0``: yield to the loop once)."""
        if delay <= 0:
            await asyncio.sleep(0)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        timer = self.call_later(delay, wake)
        try:
            await woken
        finally:
            timer.cancel()

    @property
    def pending(self) -> int:
        """Timers not run nor cancelled."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def advance(self, s: float) -> None:
        """Move both readings forward by ``s`` seconds, running the timers due on the way; a negative step raises
        ``ValueError``."""
        if s < 0:
            raise ValueError(f"a clock cannot go backwards: advance({s!r})")
        target = self._monotonic + s
        while self._timers and self._timers[0][0] <= target:
            due, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._step_to(due)
            timer.callback()
        self._step_to(target)

    def _step_to(self, mono: float) -> None:
        self._wall += mono - self._monotonic
        self._monotonic = mono

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._monotonic!r}, wall={self._wall!r})"
