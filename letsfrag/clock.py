"""One injectable clock: the system's in production, a fake one that tests advance instantly."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where decisions read the time from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for timeouts and intervals)."""
        ...

    def time(self) -> float:
        """Wall-clock time in epoch seconds (for timestamps shown to people)."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.time`."""

    def monotonic(self) -> float:
        """Return :func:`time.monotonic`."""
        return time.monotonic()

    def time(self) -> float:
        """Return :func:`time.time`."""
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock that only moves when told to; both readings advance together."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._monotonic = float(start)
        self._wall = float(wall)

    def monotonic(self) -> float:
        """Return the fake monotonic reading."""
        return self._monotonic

    def time(self) -> float:
        """Return the fake wall-clock reading."""
        return self._wall

    def advance(self, s: float) -> None:
        """Move both readings forward by ``s`` seconds; a negative step raises ``ValueError``."""
        if s < 0:
            raise ValueError(f"a clock cannot go backwards: advance({s!r})")
        self._monotonic += s
        self._wall += s

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._monotonic!r}, wall={self._wall!r})"
