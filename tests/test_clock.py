"""The injectable clocks."""

from __future__ import annotations

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
