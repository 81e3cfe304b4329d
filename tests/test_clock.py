"""The injectable clocks."""

from __future__ import annotations

import asyncio
import time

import pytest

from letsfrag.clock import Clock, FakeClock, SystemClock


def test_fake_clock_starts_where_told_and_advances_both_readings() -> None:
    clock = FakeClock(start=5.0, wall=100.0)
    assert (clock.monotonic(), clock.time()) == (5.0, 100.0)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.time()) == (7.5, 102.5)
    clock.advance(0)
    assert clock.monotonic() == 7.5


def test_fake_clock_defaults() -> None:
    clock = FakeClock()
    assert clock.monotonic() == 1000.0
    assert clock.time() == 1_700_000_000.0


def test_fake_clock_refuses_to_go_backwards() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    assert clock.monotonic() == 1000.0


def test_system_clock_reads_the_real_clocks() -> None:
    clock = SystemClock()
    before_mono, before_wall = time.monotonic(), time.time()
    mono, wall = clock.monotonic(), clock.time()
    assert before_mono <= mono <= time.monotonic()
    assert before_wall - 1 <= wall <= time.time() + 1


def test_both_satisfy_the_protocol() -> None:
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(), Clock)


def test_fake_clock_runs_due_timers_in_order_at_their_due_time() -> None:
    clock = FakeClock(start=0.0, wall=100.0)
    seen: list[tuple[str, float, float]] = []
    clock.call_later(2.0, lambda: seen.append(("b", clock.monotonic(), clock.time())))
    clock.call_later(1.0, lambda: seen.append(("a", clock.monotonic(), clock.time())))
    cancelled = clock.call_later(1.5, lambda: seen.append(("cancelled", 0.0, 0.0)))
    cancelled.cancel()
    assert clock.pending == 2
    clock.advance(0.5)
    assert seen == []
    clock.advance(2.0)
    assert seen == [("a", 1.0, 101.0), ("b", 2.0, 102.0)]
    assert (clock.monotonic(), clock.time()) == (2.5, 102.5) and clock.pending == 0


def test_fake_clock_timer_of_no_delay_runs_on_the_next_advance() -> None:
    clock = FakeClock()
    seen: list[int] = []
    clock.call_later(-1.0, lambda: seen.append(1))
    assert seen == []
    clock.advance(0)
    assert seen == [1]


async def test_fake_clock_sleep_returns_when_advanced_past_it() -> None:
    clock = FakeClock(start=0.0)
    sleeper = asyncio.create_task(clock.sleep(3.0))
    await asyncio.sleep(0)
    clock.advance(2.9)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance(0.1)
    await asyncio.wait_for(sleeper, 1.0)
    assert clock.pending == 0


async def test_fake_clock_cancelled_sleep_leaves_no_timer() -> None:
    clock = FakeClock()
    sleeper = asyncio.create_task(clock.sleep(3.0))
    await asyncio.sleep(0)
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert clock.pending == 0


async def test_system_clock_runs_timers_on_the_event_loop() -> None:
    clock = SystemClock()
    fired = asyncio.Event()
    clock.call_later(0.0, fired.set)
    await asyncio.wait_for(fired.wait(), 5.0)
    cancelled = clock.call_later(0.0, lambda: pytest.fail("a cancelled timer ran"))
    cancelled.cancel()
    await clock.sleep(0.01)
