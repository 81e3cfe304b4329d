"""The Redis identify coordinator: one grant per bucket per window, FIFO, dead waiters skipped, budget paced."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from support.cluster import KEYS
from support.waiting import scaled, wait_until

from letsfrag.cluster.identify import (
    IdentifyCoordinator,
    IdentifyTimeout,
    budget_from_gateway,
    default_identify_margin,
)
from letsfrag.events import recent

WINDOW = 0.2


async def _seq_at_least(r: aioredis.Redis, n: int) -> bool:
    return int(await r.get(KEYS.identify("seq")) or 0) >= n


def coordinator(r: aioredis.Redis, max_concurrency: int = 1, window: float = WINDOW,
                **kwargs: Any) -> IdentifyCoordinator:
    return IdentifyCoordinator(r, KEYS, max_concurrency=max_concurrency, window=window, margin=0.02,
                               poll_interval=0.01, **kwargs)


async def test_fifo_and_one_grant_per_window_across_processes(r: aioredis.Redis, redis_url: str) -> None:
    """12 waiters on 2 buckets from 3 'processes' (own connections): FIFO per bucket, grants >= window apart."""
    clients = [aioredis.Redis.from_url(redis_url, decode_responses=True) for _ in range(3)]
    coords = [coordinator(c, max_concurrency=2) for c in clients]
    grants: list[tuple[int, int, float]] = []  # (bucket, arrival, time)

    async def waiter(arrival: int, shard: int) -> None:
        await coords[arrival % 3].acquire(shard, f"c:{shard}", timeout=20)
        grants.append((shard % 2, arrival, time.monotonic()))

    tasks = []
    for arrival in range(12):
        tasks.append(asyncio.create_task(waiter(arrival, arrival)))
        await wait_until(lambda a=arrival: _seq_at_least(r, a + 1), message="enqueued")  # type: ignore[misc]
    await asyncio.gather(*tasks)
    for bucket in (0, 1):
        mine = [(arrival, at) for b, arrival, at in grants if b == bucket]
        assert [a for a, _ in mine] == sorted(a for a, _ in mine), f"bucket {bucket} not FIFO: {mine}"
        gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(mine)]
        assert min(gaps) >= WINDOW, gaps
    # both buckets ran in parallel: 6 grants per bucket take about 5 windows, not 11
    span = max(at for *_, at in grants) - min(at for *_, at in grants)
    assert span < 9 * WINDOW
    assert int(await r.get(KEYS.identify("granted")) or 0) == 12
    assert await coords[0].depth() == 0
    for c in clients:
        await c.aclose()


async def test_confirm_restarts_the_window_from_the_identify(r: aioredis.Redis) -> None:
    """A grant taken before a slow connection: confirming just before IDENTIFY pushes the next grant of the
    bucket a whole window past the IDENTIFY, not past the grant; an expired slot is not confirmed. The window
    scales (the confirmation comes half a window after the grant: on a CPU oversubscribed four times a 0.2 s
    window's last quarter was not enough for the event loop to get there)."""
    window = scaled(0.5)
    coord = coordinator(r, window=window)
    await coord.acquire(0, "a", timeout=5)
    granted = time.monotonic()
    await wait_until(lambda: time.monotonic() - granted >= window * 0.5, message="a slow connect")
    assert await coord.confirm(0, "a") is True
    confirmed = time.monotonic()
    await coord.acquire(1, "b", timeout=scaled(5))  # same bucket (max_concurrency 1)
    assert time.monotonic() - confirmed >= window, "the next grant waits a window after the confirmation"
    assert await coord.confirm(0, "a") is False, "b holds the slot now"
    await wait_until(lambda: time.monotonic() - confirmed >= 3 * window, message="the slot expired")
    assert await coord.confirm(1, "b") is False, "an expired slot is not confirmed: acquire again"


async def test_dead_waiter_is_skipped(r: aioredis.Redis) -> None:
    """A ticket at the head whose waiter died (ticket key expired) does not block the bucket."""
    coord = coordinator(r)
    await r.zadd(KEYS.identify("queue:0"), {"999": 0})  # a dead waiter: no ticket key
    waited = await coord.acquire(0, "c:0", timeout=2)
    assert waited < 0.5
    assert await r.zcard(KEYS.identify("queue:0")) == 0


async def test_timeout_keeps_the_place_for_the_next_attempt(r: aioredis.Redis) -> None:
    """A re-identify that times out inside discord.py's 60 s keeps its ticket; the retry continues from it."""
    coord = coordinator(r, keep_place=5.0)
    await coord.acquire(0, "c:0", timeout=1)  # takes the slot for a window
    with pytest.raises(IdentifyTimeout):
        await coord.acquire(1 * 1, "c:1", timeout=0.01)
    ticket_before = await r.zrange(KEYS.identify("queue:0"), 0, -1)
    assert len(ticket_before) == 1
    other = asyncio.create_task(coord.acquire(2, "c:2", timeout=5))  # arrives later
    await wait_until(lambda: coord.depth(), message="second waiter queued")
    order: list[str] = []
    first = asyncio.create_task(coord.acquire(1, "c:1", timeout=5))
    first.add_done_callback(lambda _: order.append("c:1"))
    other.add_done_callback(lambda _: order.append("c:2"))
    await asyncio.gather(first, other)
    assert order == ["c:1", "c:2"]
    await coord.close()


async def test_cancelled_waiter_leaves_the_queue(r: aioredis.Redis) -> None:
    coord = coordinator(r)
    await coord.acquire(0, "c:0", timeout=1)
    task = asyncio.create_task(coord.acquire(0, "c:0b", timeout=5))
    await wait_until(lambda: coord.depth(), message="queued")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await coord.depth() == 0


async def test_budget_decrements_and_paces_below_the_reserve(r: aioredis.Redis) -> None:
    """Below 10 % remaining the grants spread over the time to reset_at, and an error event is emitted."""
    coord = coordinator(r, max_concurrency=4)
    assert await coord.ensure_budget({"total": 100, "remaining": 50, "reset_after": 3_600_000, "max_concurrency": 4})
    assert not await coord.ensure_budget({"total": 1, "remaining": 1, "reset_after": 1})  # never overwritten
    await coord.acquire(0, "c:0", timeout=1)
    assert await r.hget(KEYS.identify("budget"), "remaining") == "49"  # type: ignore[misc]
    # now in the reserve: 4 left, 1.2 s to the reset -> one grant every 0.3 s, across buckets
    await r.hset(KEYS.identify("budget"), mapping={"remaining": 4, "reset_at": f"{time.time() + 1.2:.3f}"})  # type: ignore[misc]
    started = time.monotonic()
    times = []
    for shard in (1, 2, 3):  # three different buckets: no window between them, only the budget pacing
        await coord.acquire(shard, f"c:{shard}", timeout=5)
        times.append(time.monotonic() - started)
    assert times[0] < 0.2
    assert times[1] >= 0.2 and times[2] - times[1] >= 0.2, times
    assert await r.hget(KEYS.identify("budget"), "remaining") == "1"  # type: ignore[misc]
    events = await recent(r, KEYS)
    assert any(e.kind == "identify_budget" and e.severity == "error" for e in events)


def test_budget_from_gateway() -> None:
    budget = budget_from_gateway({"total": 1000, "remaining": 990, "reset_after": 5000, "max_concurrency": 16},
                                 now=100.0)
    assert budget == {"total": 1000, "remaining": 990, "reset_at": 105.0, "max_concurrency": 16}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        IdentifyCoordinator(None, KEYS, max_concurrency=0, window=5)  # type: ignore[arg-type]


def test_the_margin_scales_with_the_window() -> None:
    """0.1 s beyond Discord's 5 s window, 2 % of a longer one, never under 50 ms for the short windows of tests."""
    assert default_identify_margin(5.0) == pytest.approx(0.1)
    assert default_identify_margin(10.0) == pytest.approx(0.2)
    assert default_identify_margin(1.0) == pytest.approx(0.05)
    assert default_identify_margin(0.2) == pytest.approx(0.05)


async def test_the_coordinator_takes_the_scaled_margin_by_default(r: aioredis.Redis) -> None:
    assert IdentifyCoordinator(r, KEYS, max_concurrency=1, window=5.0).margin == pytest.approx(0.1)
    assert IdentifyCoordinator(r, KEYS, max_concurrency=1, window=5.0, margin=0.3).margin == pytest.approx(0.3)
