"""The supervisor's side of a planned handover, with a real redis-server and real processes (the stub program).

The test plays the broker: it writes ``{ns}:layout``, ``{ns}:assignment`` and ``{ns}:handover`` itself and
listens on the broker inbox. The successor runs the stub (it reports ready over IPC like any cluster), not the
real cluster client: that one fences itself until the cluster side of the handover is merged.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from support.supervisor import (
    HOST,
    KEYS,
    doorbell,
    gone,
    grant,
    host_config,
    revoke,
    set_modes,
    start_supervisor,
    starts,
    status,
    stub_program,
    write_layout,
    write_supervise_config,
)
from support.waiting import wait_until

from letsfrag.bus import Bus
from letsfrag.contract.envelope import Envelope
from letsfrag.contract.handover import (
    HANDOFF_BLOCKED_FIELD,
    SUCCESSORS_FIELD,
    HandoverRecord,
    HandoverState,
    parse_successors,
)
from letsfrag.supervisor import ClusterManager, ClusterState


class BrokerSpy:
    """The broker's inbox as the test sees it."""

    def __init__(self) -> None:
        self.inbox: list[Envelope] = []

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.payload for e in self.inbox if e.type == kind]


@pytest.fixture
async def spy(redis_url: str) -> AsyncIterator[BrokerSpy]:
    result = BrokerSpy()
    async with Bus(redis_url, node_id="broker:test", namespace="t") as bus:
        async def collect(envelope: Envelope) -> None:
            result.inbox.append(envelope)
        await bus.subscribe(KEYS.broker_inbox, collect)
        yield result


def config(redis_url: str, tmp_path: Path, *, launcher: str = "fork", **overrides: Any) -> Any:
    stub = tmp_path / "stub"
    env = {"STUB_DIR": str(stub), "STUB_MODE_FILE": str(stub / "modes.json"), "STUB_READY_DELAY": "0.6"}
    return host_config(redis_url, tmp_path, bot={**stub_program(launcher), "env": env}, **overrides)


async def handover(r: aioredis.Redis, epoch: int, *, from_epoch: int, state: HandoverState = HandoverState.PREPARING,
                   cluster: int = 0, from_host: str = HOST) -> None:
    now = time.time()
    record = HandoverRecord(cluster=cluster, host=HOST, epoch=epoch, from_host=from_host, from_epoch=from_epoch,
                            reason="restart", state=state, started=now, deadline=now + 30)
    await r.hset(KEYS.handover, str(cluster), record.to_json())  # type: ignore[misc]
    await doorbell(r)


async def reports(r: aioredis.Redis) -> dict[int, Any]:
    return parse_successors(await r.hget(KEYS.host(HOST), SUCCESSORS_FIELD))  # type: ignore[misc]


async def started_ready(manager: ClusterManager, r: aioredis.Redis) -> int:
    await write_layout(r)
    await grant(r, 0, epoch=1)
    await manager.start()
    await wait_until(lambda: 0 in manager.clusters and manager.clusters[0].state is ClusterState.READY,
                     message="cluster 0 READY")
    pid = manager.clusters[0].pid
    assert pid is not None
    return pid


async def successor_ready(manager: ClusterManager, r: aioredis.Redis, spy: BrokerSpy, tmp_path: Path) -> int:
    """Write a preparing record for epoch 2; see the successor reported starting, then ready; return its pid."""
    hellos = len(spy.of("host_hello"))
    await handover(r, 2, from_epoch=1)
    first = await wait_until(lambda: reports(r), message="a successor report")
    assert first[0].state == "starting" and first[0].epoch == 2, first
    ready = await wait_until(lambda: _state_is(r, "ready"), message="the successor reported ready")
    pid = ready[0].pid
    assert pid is not None and pid != manager.clusters[0].pid
    start = starts(tmp_path, 0)[-1]
    assert start["pid"] == pid and start["epoch"] == "2" and start["handover"] == "1"
    await wait_until(lambda: len(spy.of("host_hello")) >= hellos + 2, message="a host_hello per report change")
    # the old process keeps serving; the host holds the cluster at the old epoch
    view = manager.clusters[0]
    assert view.epoch == 1 and view.state is ClusterState.READY
    assert json.loads(await r.hget(KEYS.host(HOST), "running")) == {"0": 1}  # type: ignore[misc]
    return int(pid)


async def _state_is(r: aioredis.Redis, state: str) -> dict[int, Any] | None:
    found = await reports(r)
    return found if 0 in found and found[0].state == state else None


@pytest.mark.parametrize("launcher", ["fork", "exec"])
async def test_restart_in_place_promotes_the_successor_and_retires_the_old_process(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, spy: BrokerSpy, launcher: str) -> None:
    set_modes(tmp_path, default="well")
    manager = ClusterManager(config(redis_url, tmp_path, launcher=launcher))
    try:
        old = await started_ready(manager, r)
        new = await successor_ready(manager, r, spy, tmp_path)
        # the switch, as the broker's script does it: the assignment names the successor's epoch
        await r.hset(KEYS.assignment, "0", json.dumps({"host": HOST, "epoch": 2}))  # type: ignore[misc]
        await handover(r, 2, from_epoch=1, state=HandoverState.SWITCHED)
        await wait_until(lambda: manager.clusters[0].pid == new and manager.clusters[0].epoch == 2,
                         message="the successor is the cluster's process")
        assert manager.clusters[0].state is ClusterState.READY
        await wait_until(lambda: gone(old), message="the old process stopped")
        stopped = await wait_until(lambda: spy.of("cluster_stopped"), message="cluster_stopped")
        assert stopped == [{"host": HOST, "cluster": 0, "epoch": 1}]
        assert not gone(new)
        promoted = tmp_path / "stub" / "promoted-0.jsonl"
        await wait_until(promoted.exists, message="IPC promote reached the successor")
        assert json.loads(promoted.read_text().splitlines()[0]) == {"pid": new, "epoch": 2}
        assert await reports(r) == {}
        assert json.loads(await r.hget(KEYS.host(HOST), "running")) == {"0": 2}  # type: ignore[misc]
        assert [s["pid"] for s in starts(tmp_path, 0)] == [old, new]  # no third process
        # from now on it is the cluster's process: a revoke stops it and confirms with the new epoch
        await revoke(r, 0)
        await wait_until(lambda: manager.clusters[0].state is ClusterState.STOPPED, message="revoked")
        assert gone(new)
        await wait_until(lambda: len(spy.of("cluster_stopped")) == 2, message="second cluster_stopped")
        assert spy.of("cluster_stopped")[1]["epoch"] == 2
    finally:
        await manager.close()


async def test_a_cluster_handed_over_from_another_host_becomes_this_hosts(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, spy: BrokerSpy) -> None:
    set_modes(tmp_path, default="well")
    manager = ClusterManager(config(redis_url, tmp_path))
    try:
        await started_ready(manager, r)
        await r.hset(KEYS.assignment, "1", json.dumps({"host": "h0", "epoch": 3}))  # type: ignore[misc]
        await handover(r, 4, from_epoch=3, cluster=1, from_host="h0")
        ready = await wait_until(lambda: _reported(r, 1, "ready"), message="the successor of cluster 1 ready")
        assert 1 not in manager.clusters  # not this host's cluster before the switch
        await r.hset(KEYS.assignment, "1", json.dumps({"host": HOST, "epoch": 4}))  # type: ignore[misc]
        await handover(r, 4, from_epoch=3, cluster=1, from_host="h0", state=HandoverState.SWITCHED)
        await wait_until(lambda: 1 in manager.clusters and manager.clusters[1].state is ClusterState.READY,
                         message="cluster 1 READY here")
        view = manager.clusters[1]
        assert view.pid == ready[1].pid and view.epoch == 4 and view.shard_ids == (1,)
        await wait_until(lambda: _running(r, {"0": 1, "1": 4}), message="running lists cluster 1")
        assert spy.of("cluster_stopped") == []  # the source host confirms its own stop
        assert len(starts(tmp_path, 1)) == 1
    finally:
        await manager.close()


async def _reported(r: aioredis.Redis, cluster: int, state: str) -> dict[int, Any] | None:
    found = await reports(r)
    return found if cluster in found and found[cluster].state == state else None


async def _running(r: aioredis.Redis, expected: dict[str, int]) -> bool:
    return json.loads(await r.hget(KEYS.host(HOST), "running") or "{}") == expected  # type: ignore[misc]


async def test_record_deleted_before_the_switch_stops_the_successor(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, spy: BrokerSpy) -> None:
    set_modes(tmp_path, default="well")
    manager = ClusterManager(config(redis_url, tmp_path))
    try:
        old = await started_ready(manager, r)
        new = await successor_ready(manager, r, spy, tmp_path)
        await r.hdel(KEYS.handover, "0")  # type: ignore[misc]
        await doorbell(r)
        await wait_until(lambda: gone(new), message="the successor stopped")
        await wait_until(lambda: _empty(r), message="its report dropped")
        view = manager.clusters[0]
        assert view.pid == old and view.epoch == 1 and view.state is ClusterState.READY and not gone(old)
        assert spy.of("cluster_stopped") == []
    finally:
        await manager.close()


async def _empty(r: aioredis.Redis) -> bool:
    return await reports(r) == {}


async def test_a_successor_that_exits_early_is_reported_failed(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, spy: BrokerSpy) -> None:
    set_modes(tmp_path, default="well")
    manager = ClusterManager(config(redis_url, tmp_path))
    try:
        old = await started_ready(manager, r)
        set_modes(tmp_path, default="crash")  # the next start of the program crashes
        await handover(r, 2, from_epoch=1)
        failed = await wait_until(lambda: _state_is(r, "failed"), message="the successor reported failed")
        assert failed[0].epoch == 2 and "exited before the switch" in failed[0].reason
        # kept until the broker deletes the record; never started again for it; the old process serves on
        await doorbell(r)
        await wait_until(lambda: manager.agent is not None and manager.agent.renewals >= 3, message="renewals")
        assert (await reports(r))[0].state == "failed"
        assert len(starts(tmp_path, 0)) == 2
        assert manager.clusters[0].pid == old and manager.clusters[0].state is ClusterState.READY
        await r.hdel(KEYS.handover, "0")  # type: ignore[misc]
        await doorbell(r)
        await wait_until(lambda: _empty(r), message="the failed report dropped")
    finally:
        await manager.close()


async def _others_up(r: aioredis.Redis) -> None:
    """Another host is up (the test plays the broker: its spy listens on the broker inbox)."""
    await r.sadd(KEYS.hosts, "h2")  # type: ignore[misc]
    await r.set(KEYS.lease("h2"), "x", px=60_000)


async def test_a_leaving_supervisor_waits_until_its_clusters_are_handed_away(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, spy: BrokerSpy) -> None:
    set_modes(tmp_path, default="well")
    manager = ClusterManager(config(redis_url, tmp_path, limits={"leave_timeout": 30.0, "stop_timeout": 1.0}))
    pid = await started_ready(manager, r)
    await _others_up(r)
    closing = asyncio.create_task(manager.close())
    try:
        leave = await wait_until(lambda: spy.of("host_leave"), message="host_leave")
        assert leave[0]["hand_off"] is True
        assert await r.hget(KEYS.host(HOST), "state") == "leaving"  # type: ignore[misc]
        # the lease stays while the broker hands the clusters away; the cluster keeps running
        await wait_until(lambda: manager.agent is not None and manager.agent.renewals >= 3, message="renewals")
        assert await r.exists(KEYS.lease(HOST)) and not closing.done() and not gone(pid)
        # the broker moved cluster 0 elsewhere: the grant is gone here
        await revoke(r, 0)
        await asyncio.wait_for(closing, 10)
        assert gone(pid)
        assert spy.of("cluster_stopped") == [{"host": HOST, "cluster": 0, "epoch": 1}]
        events = [e for _, e in await r.xrange(KEYS.events)]
        assert any(e["kind"] == "host_handed_off" for e in events), events
        assert not any(e["kind"] == "host_leave_stopping" for e in events)
    finally:
        await manager.close(force=True)


async def test_a_leaving_supervisor_stops_at_once_when_no_host_has_room(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, spy: BrokerSpy) -> None:
    set_modes(tmp_path, default="well")
    manager = ClusterManager(config(redis_url, tmp_path, limits={"leave_timeout": 30.0, "stop_timeout": 1.0}))
    pid = await started_ready(manager, r)
    await _others_up(r)
    closing = asyncio.create_task(manager.close())
    try:
        await wait_until(lambda: spy.of("host_leave"), message="host_leave")
        await r.hset(KEYS.host(HOST), HANDOFF_BLOCKED_FIELD, "no host has room for 1 cluster")  # type: ignore[misc]
        started = time.monotonic()
        await asyncio.wait_for(closing, 10)
        assert time.monotonic() - started < 8
        assert gone(pid)
        events = [e for _, e in await r.xrange(KEYS.events)]
        why = [e["message"] for e in events if e["kind"] == "host_leave_stopping"]
        assert len(why) == 1 and "no other host has room" in why[0] and "[0]" in why[0], why
        assert "their shards go offline" in why[0]
    finally:
        await manager.close(force=True)


async def test_a_forced_close_does_not_wait_for_a_hand_off(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, spy: BrokerSpy) -> None:
    set_modes(tmp_path, default="well")
    manager = ClusterManager(config(redis_url, tmp_path, limits={"leave_timeout": 30.0, "stop_timeout": 1.0}))
    pid = await started_ready(manager, r)
    await _others_up(r)
    closing = asyncio.create_task(manager.close())
    await wait_until(lambda: manager.handing_off, message="handing off")
    started = time.monotonic()
    await manager.close(force=True)  # what a second SIGTERM does
    await asyncio.wait_for(closing, 5)
    assert time.monotonic() - started < 5 and gone(pid)


async def test_no_hand_off_without_a_broker_listening(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="well")
    manager = ClusterManager(config(redis_url, tmp_path, limits={"leave_timeout": 30.0, "stop_timeout": 1.0}))
    pid = await started_ready(manager, r)
    await _others_up(r)
    started = time.monotonic()
    await manager.close()
    assert time.monotonic() - started < 8 and gone(pid)
    events = [e for _, e in await r.xrange(KEYS.events)]
    assert any(e["kind"] == "host_leave_stopping" and "no broker is running" in e["message"] for e in events)


async def test_a_leaving_supervisor_stops_when_the_other_host_leaves_too(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, spy: BrokerSpy) -> None:
    set_modes(tmp_path, default="well")
    manager = ClusterManager(config(redis_url, tmp_path, limits={"leave_timeout": 30.0, "stop_timeout": 1.0}))
    pid = await started_ready(manager, r)
    await _others_up(r)
    closing = asyncio.create_task(manager.close())
    try:
        await wait_until(lambda: spy.of("host_leave"), message="host_leave")
        await r.hset(KEYS.host("h2"), "state", "leaving")  # type: ignore[misc]  # every host got SIGTERM
        await asyncio.wait_for(closing, 10)
        assert gone(pid)
        events = [e for _, e in await r.xrange(KEYS.events)]
        assert any(e["kind"] == "host_leave_stopping" and "no other host is up" in e["message"] for e in events)
    finally:
        await manager.close(force=True)


async def _supervise_until_handing_off(redis_url: str, r: aioredis.Redis, tmp_path: Path,
                                       spy: BrokerSpy) -> tuple[subprocess.Popen[bytes], int]:
    """``letsfrag supervise`` with cluster 0 READY, another host up, then SIGTERM: it asked to hand off."""
    set_modes(tmp_path, default="well")
    config = write_supervise_config(redis_url, tmp_path, leave_timeout="30s")
    await write_layout(r)
    await grant(r, 0, epoch=1)
    proc = start_supervisor(config)
    st = await wait_until(lambda: _ready_status(r), timeout=15, message="cluster 0 ready")
    await _others_up(r)
    proc.send_signal(signal.SIGTERM)
    await wait_until(lambda: spy.of("host_leave"), message="host_leave")
    assert spy.of("host_leave")[0]["hand_off"] is True
    return proc, int(st["pid"])


async def _ready_status(r: aioredis.Redis) -> dict[str, str] | None:
    st = await status(r, 0)
    return st if st.get("state") == "ready" and st.get("pid") else None


async def test_sigterm_keeps_serving_until_the_grants_go(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, spy: BrokerSpy) -> None:
    proc, pid = await _supervise_until_handing_off(redis_url, r, tmp_path, spy)
    try:
        renewed = await r.hget(KEYS.host(HOST), "heartbeat_at")  # type: ignore[misc]
        await wait_until(lambda: _renewed_after(r, renewed), message="a renewal while leaving")
        assert proc.poll() is None and not gone(pid)
        await revoke(r, 0)
        await wait_until(lambda: proc.poll() is not None, timeout=10, message="the supervisor exited")
        assert proc.returncode == 0 and gone(pid)
        assert spy.of("cluster_stopped") == [{"host": HOST, "cluster": 0, "epoch": 1}]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _renewed_after(r: aioredis.Redis, before: str | None) -> bool:
    return await r.hget(KEYS.host(HOST), "heartbeat_at") != before  # type: ignore[misc,no-any-return]


async def test_a_second_sigterm_stops_at_once(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, spy: BrokerSpy) -> None:
    proc, pid = await _supervise_until_handing_off(redis_url, r, tmp_path, spy)
    try:
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: proc.poll() is not None, timeout=10, message="the supervisor exited")
        assert time.monotonic() - started < 8 and gone(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_bad_handover_record_is_reported_once_and_ignored(
        redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="well")
    manager = ClusterManager(config(redis_url, tmp_path))
    try:
        pid = await started_ready(manager, r)
        await r.hset(KEYS.handover, "0", "{not json")  # type: ignore[misc]
        await doorbell(r)
        await wait_until(lambda: _invalid(r), message="redis_value_invalid")
        renewals = manager.agent.renewals if manager.agent else 0
        await wait_until(lambda: manager.agent is not None and manager.agent.renewals >= renewals + 3,
                         message="renewals")
        await doorbell(r)
        events = await _invalid(r)
        assert len(events) == 1 and events[0]["key"] == KEYS.handover and "is not JSON" in events[0]["message"]
        assert await reports(r) == {} and manager.clusters[0].pid == pid
    finally:
        await manager.close()


async def _invalid(r: aioredis.Redis) -> list[dict[str, str]]:
    return [e for _, e in await r.xrange(KEYS.events) if e["kind"] == "redis_value_invalid"]
