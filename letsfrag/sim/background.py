"""Timed work of the simulator: the zombie reaper, ``!ping`` traffic and chaos runs."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from letsfrag.sim.core import SimCore

log = logging.getLogger(__name__)


def paced_due(rate: float, elapsed: float, total: int | None) -> int:
    """How many events should have happened ``elapsed`` seconds into a run at ``rate`` per second.

    The first one is due at once; ``total`` (None = unbounded) caps the count.
    """
    due = math.floor(rate * elapsed) + 1
    return due if total is None else min(total, due)


class Background:
    """Owns every task the simulator runs on its own and cancels them on close."""

    def __init__(self, core: SimCore) -> None:
        self.core = core
        self._tasks: set[asyncio.Task[None]] = set()
        self._traffic: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start(self) -> None:
        """Start the reaper (and background traffic when the options ask for it)."""
        self._spawn(self._reaper(), "sim-reaper")
        if self.core.options.traffic_rate > 0:
            self.start_traffic(self.core.options.traffic_rate, None)

    async def close(self) -> None:
        """Cancel every task and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reaper(self) -> None:
        options = self.core.options
        tick = max(0.02, min(1.0, options.heartbeat_interval / 4, max(options.resume_window, 0.08) / 4))
        while True:
            await asyncio.sleep(tick)
            try:
                self.core.reap()
            except Exception:  # never let one bad connection stop the reaper
                log.exception("simulator reaper failed")

    async def _paced(self, rate: float, seconds: float | None, step: Callable[[], object], what: str) -> None:
        clock = self.core.clock
        total = None if seconds is None else max(0, round(rate * seconds))
        tick = max(0.01, min(0.25, 1.0 / rate))
        start, done = clock(), 0
        while total is None or done < total:
            due = paced_due(rate, clock() - start, total)
            while done < due:
                done += 1
                try:
                    step()
                except Exception:
                    log.exception("simulator %s step failed", what)
            if total is not None and done >= total:
                break
            await asyncio.sleep(tick)

    def start_traffic(self, rate: float, seconds: float | None, joins: float = 0.0) -> asyncio.Task[None]:
        """Send ``rate`` events per second for ``seconds`` (None = until stopped): ``!ping`` messages, and member
        joins for a ``joins`` share of them (0 to 1)."""
        if rate <= 0:
            raise ValueError(f"traffic rate must be positive, found {rate}")
        if not 0 <= joins <= 1:
            raise ValueError(f"joins must be a share between 0 and 1, found {joins}")
        task = self._spawn(self._paced(rate, seconds, lambda: self.core.send_event(joins), "traffic"),
                           "sim-traffic")
        self._traffic.add(task)
        task.add_done_callback(self._traffic.discard)
        return task

    def stop_traffic(self) -> int:
        """Stop every traffic run; return how many were running."""
        tasks = list(self._traffic)
        for task in tasks:
            task.cancel()
        return len(tasks)

    def start_chaos(self, seconds: float, rate: float) -> asyncio.Task[None]:
        """Random RECONNECT / INVALID_SESSION on random live shards, ``rate`` per second for ``seconds``."""
        if rate <= 0 or seconds <= 0:
            raise ValueError(f"chaos needs a positive rate and duration, found rate={rate} seconds={seconds}")
        return self._spawn(self._paced(rate, seconds, self.core.chaos_step, "chaos"), "sim-chaos")
