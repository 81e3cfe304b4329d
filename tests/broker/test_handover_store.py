"""The broker's fenced handover scripts against a real redis-server: begin, switch, end, and their refusals."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from letsfrag.broker.store import NotLeader, Store
from letsfrag.clock import SystemClock
from letsfrag.cluster.ownership import OwnershipChecker
from letsfrag.contract.handover import HandoverState, SuccessorReport, SuccessorState
from letsfrag.contract.keys import Keys
from letsfrag.contract.records import Grant

KEYS = Keys("letsfrag")


async def _leader(r: aioredis.Redis, broker: str = "b1") -> Store:
    await r.set(KEYS.leader, broker)
    return Store(r, KEYS, broker)


async def _assigned(r: aioredis.Redis, cluster: int) -> dict[str, object]:
    return json.loads(await r.hget(KEYS.assignment, str(cluster)))  # type: ignore[no-any-return]


async def test_begin_switch_end(r: aioredis.Redis) -> None:
    store = await _leader(r)
    epoch = await store.grant(3, "a")
    begun = await store.begin_handover(3, "b", Grant("a", epoch), "drain", 30.0)
    assert begun is not None and begun.state is HandoverState.PREPARING
    assert (begun.host, begun.from_host, begun.from_epoch, begun.epoch) == ("b", "a", epoch, epoch + 1)
    assert 29.9 < begun.deadline - begun.started < 30.1
    assert int(await r.get(KEYS.epoch)) == epoch + 1
    assert await _assigned(r, 3) == {"host": "a", "epoch": epoch}  # still the old owner
    # a second handover of the same cluster is refused while the first runs
    assert await store.begin_handover(3, "c", Grant("a", epoch), "drain", 30.0) is None
    snap = await store.snapshot(1)
    assert snap.handovers == {3: begun} and snap.time > 0
    switched = await store.switch_handover(begun, 5.0)
    assert switched is not None and switched.state is HandoverState.SWITCHED
    assert 4.9 < switched.deadline - snap.time < 6.0
    assert await _assigned(r, 3) == {"host": "b", "epoch": epoch + 1}
    assert await store.switch_handover(begun, 5.0) is None  # only once
    assert await store.end_handover(switched)
    assert await r.hlen(KEYS.handover) == 0
    assert not await store.end_handover(switched)


async def test_begin_refused_when_the_assignment_moved_on(r: aioredis.Redis) -> None:
    store = await _leader(r)
    epoch = await store.grant(3, "a")
    assert await store.begin_handover(3, "b", Grant("a", epoch - 1), "drain", 30.0) is None
    assert await store.begin_handover(3, "b", Grant("c", epoch), "drain", 30.0) is None
    assert await store.begin_handover(4, "b", Grant("a", epoch), "drain", 30.0) is None  # unassigned
    assert await r.hlen(KEYS.handover) == 0


async def test_switch_refused_when_the_assignment_changed(r: aioredis.Redis) -> None:
    store = await _leader(r)
    epoch = await store.grant(3, "a")
    begun = await store.begin_handover(3, "b", Grant("a", epoch), "restart", 30.0)
    assert begun is not None
    await store.grant(3, "c")  # an unplanned failover moved it meanwhile
    before = await _assigned(r, 3)
    assert await store.switch_handover(begun, 5.0) is None
    assert await _assigned(r, 3) == before
    assert json.loads(await r.hget(KEYS.handover, "3"))["state"] == "preparing"


async def test_end_keeps_a_newer_record(r: aioredis.Redis) -> None:
    store = await _leader(r)
    epoch = await store.grant(3, "a")
    first = await store.begin_handover(3, "b", Grant("a", epoch), "drain", 30.0)
    assert first is not None and await store.end_handover(first)
    second = await store.begin_handover(3, "b", Grant("a", epoch), "drain", 30.0)
    assert second is not None and second.epoch == first.epoch + 1  # a rolled-back epoch is never used again
    assert not await store.end_handover(first)
    assert await r.hexists(KEYS.handover, "3")


async def test_a_non_leader_cannot_begin_switch_or_end(r: aioredis.Redis) -> None:
    store = await _leader(r)
    epoch = await store.grant(3, "a")
    begun = await store.begin_handover(3, "b", Grant("a", epoch), "drain", 30.0)
    assert begun is not None
    await r.set(KEYS.leader, "b2")  # another broker took the lock
    with pytest.raises(NotLeader):
        await store.switch_handover(begun, 5.0)
    with pytest.raises(NotLeader):
        await store.begin_handover(3, "c", Grant("a", epoch), "drain", 30.0)
    with pytest.raises(NotLeader):
        await store.end_handover(begun)
    assert await _assigned(r, 3) == {"host": "a", "epoch": epoch}
    assert await r.hexists(KEYS.handover, "3")


async def test_snapshot_reads_successors_and_reports_bad_values(r: aioredis.Redis) -> None:
    store = await _leader(r)
    ready = SuccessorReport(cluster=3, epoch=12, state=SuccessorState.READY, pid=7)
    await r.sadd(KEYS.hosts, "a", "b", "c")
    await r.hset(KEYS.host("a"), mapping={"capacity": 2, "successors": SuccessorReport.dump({3: ready})})
    await r.hset(KEYS.host("b"), mapping={"capacity": 2, "successors": "not json"})
    await r.hset(KEYS.host("c"), mapping={"capacity": 2})
    await r.hset(KEYS.handover, mapping={"5": "{broken", "x": "{}"})
    await r.hset(KEYS.identify("budget"), mapping={"total": 1000, "remaining": 900})
    snap = await store.snapshot(1)
    assert snap.hosts["a"].successors == {3: ready} and snap.hosts["a"].handovers
    assert snap.hosts["b"].successors == {} and snap.hosts["b"].handovers
    assert not snap.hosts["c"].handovers  # an older supervisor: no successors field
    assert snap.handovers == {} and snap.handover_invalid == ["5", "x"]
    problems = sorted(str(p) for p in snap.problems)
    assert len(problems) == 3, problems
    assert any("successors" in p and "not JSON" in p for p in problems)
    assert sum("handover" in p for p in problems) == 2
    assert (snap.budget_total, snap.budget_remaining) == (1000, 900)


async def test_a_successor_owner_is_handed_over_by_the_next_handover_not_fenced(r: aioredis.Redis) -> None:
    """A process started as a handover successor (restart 1) that became the exclusive owner is handed over by the
    next handover of its cluster (restart 2) like any owner: its check between that switch and its stop finds it
    serving until stopped, not a successor whose handover "now goes to" another epoch (fenced)."""
    store = await _leader(r)
    first = await store.grant(3, "a")
    one = await store.begin_handover(3, "a", Grant("a", first), "restart", 30.0)
    assert one is not None and await store.switch_handover(one, 5.0) is not None
    await store.end_handover(one)
    await r.set(KEYS.lease("a"), "inc", px=10_000)
    checker = OwnershipChecker(r, KEYS, cluster_id=3, host_id="a", epoch=one.epoch, incarnation="inc",
                               lease_ttl=10.0, clock=SystemClock(), successor=True)
    owner = (await checker.check()).ownership
    assert owner.owner and owner.exclusive, owner
    two = await store.begin_handover(3, "a", Grant("a", one.epoch), "restart", 30.0)
    assert two is not None and (await checker.check()).ownership.owner
    assert await store.switch_handover(two, 5.0) is not None
    handed = (await checker.check()).ownership
    assert not handed.fenced, handed.reason
    assert handed.owner and handed.handed_over and f"handed over to host a epoch {two.epoch}" in handed.reason
