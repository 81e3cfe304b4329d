"""A planned handover of one cluster under traffic, the cluster side: the test plays broker and supervisors in Redis
and over IPC. The old process serves; the successor (``LETSFRAG_HANDOVER=1``) identifies beside it, gated; the
switch, IPC ``promote``, a graceful stop of the old one, the record deleted. Every ping and join is answered once.
Real discord.py clients, real Redis, the simulated Discord."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import redis.asyncio as aioredis
from support.cluster import KEYS, AnsweringClient, grant, lease_kept, make_env, running, write_layout
from support.waiting import wait_until

from letsfrag.contract.handover import GATEWAY_PARAM, HandoverRecord, HandoverState
from letsfrag.contract.ipc_ops import IpcOp
from letsfrag.ipc import IpcChannel
from letsfrag.sim import Simulator

RATE = 20.0  # events per second, a third of them member joins


def _record(state: HandoverState) -> str:
    now = time.time()
    return HandoverRecord(cluster=0, host="h2", epoch=2, from_host="h1", from_epoch=1, reason="restart",
                          state=state, started=now, deadline=now + 60).to_json()


def _settled(sim: Simulator) -> dict[str, int] | None:
    """The handling counters once every event sent is answered, or lost (not answered within the simulator's
    ``answer_timeout``), or was delivered to no session."""
    handling = sim.stats()["handling"]
    done = (handling["answered_once"] + handling["answered_twice_or_more"] + handling["undeliverable"]
            + handling["unanswered_live"])
    return handling if done >= handling["sent"] else None


async def _session_epochs(r: aioredis.Redis) -> set[int]:
    records = await r.hgetall(KEYS.session_records(0))  # type: ignore[misc]
    # shard fields only (a graceful stop also writes ``closed:<session_id>`` markers)
    return {json.loads(value)["epoch"] for field, value in records.items() if field.isdigit()}


async def _until_op(channel: IpcChannel, op: str) -> dict[str, Any]:
    while True:
        message = await channel.receive()
        assert message is not None, f"IPC closed before {op!r}"
        if message["op"] == op:
            return message


async def test_planned_handover_loses_nothing_and_answers_nothing_twice(redis_url: str, r: aioredis.Redis) -> None:
    async with Simulator(shards=2, guilds=4, identify_window=0.1, heartbeat_interval=5.0, ack_delay=0.005) as sim:
        await write_layout(r, 2, 2)
        await grant(r, 0, host="h1", epoch=1)
        old_end, old_child = socket.socketpair()
        new_end, new_child = socket.socketpair()
        async with lease_kept(r, host="h1", incarnation="inc-1"), lease_kept(r, host="h2", incarnation="inc-2"):
            old = AnsweringClient(make_env(redis_url, sim, 0, (0, 1), 2), ipc_socket=old_child, work=0.05)
            new = AnsweringClient(make_env(redis_url, sim, 0, (0, 1), 2, host_id="h2", host_incarnation="inc-2",
                                           epoch=2, handover=True), ipc_socket=new_child, work=0.05)
            old_ipc, new_ipc = await IpcChannel.from_socket(old_end), await IpcChannel.from_socket(new_end)
            async with running(old) as old_task:
                await asyncio.wait_for(_until_op(old_ipc, "ready"), 20)
                sim.start_traffic(RATE, joins=1 / 3)
                await r.hset(KEYS.handover, "0", _record(HandoverState.PREPARING))  # type: ignore[misc]
                async with running(new) as new_task:
                    await asyncio.wait_for(_until_op(new_ipc, "ready"), 20)
                    marked = [link for link in sim.core.links
                              if getattr(link, "request", None) is not None
                              and link.request.query.get(GATEWAY_PARAM) == "2"]
                    assert len(marked) == 2  # both of the successor's connections carry the marker
                    await wait_until(lambda: new.handover_stats["kept"] >= 3, timeout=10,
                                     message="the successor keeps claimable events in its gate")
                    assert new.handled == 0 and new.handover_stats["phase"] == "successor"
                    assert await r.hlen(KEYS.shard_status(0)) == 2  # type: ignore[misc]  # the old one's
                    assert await _session_epochs(r) == {1}  # the successor writes no session record yet
                    # the broker's switch: the assignment names the successor, the record says switched
                    switched_at = time.monotonic()  # (just before the switch: no handler of the successor ran yet)
                    assert new.handled == 0
                    async with r.pipeline(transaction=True) as pipe:
                        pipe.hset(KEYS.assignment, "0", json.dumps({"host": "h2", "epoch": 2}))
                        pipe.hset(KEYS.handover, "0", _record(HandoverState.SWITCHED))
                        await pipe.execute()
                    await new_ipc.send(IpcOp.PROMOTE)
                    await wait_until(lambda: new.handover_stats["phase"] == "owner", timeout=5,
                                     message="the successor owns the cluster after promote")
                    # the old host's supervisor stops the old process gracefully, then the broker deletes the record
                    await old_ipc.send("stop", reason="handed over")
                    await asyncio.wait_for(old_task, 15)
                    stopped_at = time.monotonic()
                    assert old.cluster.exit_code == 0 and old.handover_stats["phase"] == "handed_over"
                    await r.hdel(KEYS.handover, "0")  # type: ignore[misc]
                    await wait_until(lambda: new.handover_stats["phase"] == "exclusive", timeout=5,
                                     message="the successor dispatches everything once the record is gone")
                    await wait_until(lambda: sum(t > stopped_at for t in new.handled_at) >= 10, timeout=15,
                                     message="the new process handles events after the old one is gone")

                    async def new_records() -> bool:
                        return await _session_epochs(r) == {2}

                    await wait_until(new_records, timeout=5, message="the new owner's session records")
                    sim.stop_traffic()
                    handling = await wait_until(lambda: _settled(sim), timeout=15, message="every event answered")
                    assert not new_task.done()
            await old_ipc.close()
            await new_ipc.close()
            assert handling["answered_twice_or_more"] == 0, handling
            assert handling["undeliverable"] == 0 and handling["unanswered_live"] == 0, handling
            assert handling["answered_once"] == handling["sent"] and handling["sent_join"] > 0, handling
            assert old.handled + new.handled == handling["sent"]
            assert old.handled > 0 and min(new.handled_at) >= switched_at  # no user handler before the switch
            assert new.claim_stats["lost"] > 0  # kept events the old process had handled lost their claims
            assert sim.stats()["identify_violations"]["total"] == 0


async def test_a_graceful_stop_never_loses_a_claimed_event(redis_url: str, r: aioredis.Redis) -> None:
    """Two sessions of one shard (both under cluster 0's grant) under fast traffic, each answer taking 0.2 s of work;
    the one winning the claims stops (IPC ``stop``) in the middle: whatever it claimed it answers before closing,
    whatever it no longer claims the other one answers."""
    async with Simulator(shards=1, guilds=2, identify_window=0.1, heartbeat_interval=5.0, ack_delay=0.005) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        pairs = [socket.socketpair() for _ in range(2)]
        async with lease_kept(r):
            clients = [AnsweringClient(make_env(redis_url, sim, 0, (0,), 1), ipc_socket=child, work=0.2)
                       for _, child in pairs]
            channels = [await IpcChannel.from_socket(end) for end, _ in pairs]
            async with running(clients[0]) as first_task, running(clients[1]) as second_task:
                await wait_until(lambda: all(c.cluster.ready for c in clients), timeout=20,
                                 message="both sessions of shard 0 ready")
                sim.start_traffic(100.0, joins=1 / 3)
                await wait_until(lambda: max(c.handled for c in clients) >= 30, timeout=15, message="events handled")
                index = 0 if clients[0].handled >= clients[1].handled else 1
                stopping, staying = clients[index], clients[1 - index]
                await channels[index].send("stop", reason="test")
                await asyncio.wait_for((first_task, second_task)[index], 15)
                assert stopping.cluster.exit_code == 0
                handled_before = staying.handled
                await wait_until(lambda: staying.handled >= handled_before + 20, timeout=15,
                                 message="the other session goes on")
                sim.stop_traffic()

                handling = await wait_until(lambda: _settled(sim), timeout=15, message="every event answered")
            for channel in channels:
                await channel.close()
        assert handling["answered_twice_or_more"] == handling["unanswered_live"] == handling["undeliverable"] == 0, \
            handling
        assert handling["answered_once"] == handling["sent"] == stopping.handled + staying.handled, handling


async def test_a_rolled_back_successor_is_fenced_having_handled_and_written_nothing(redis_url: str,
                                                                                    r: aioredis.Redis) -> None:
    """The broker deletes the preparing record (rollback): the successor fences itself (exit 75) without having run
    a handler or written a session record; the old process never stopped serving and answers everything."""
    async with Simulator(shards=1, guilds=2, identify_window=0.1, heartbeat_interval=5.0, ack_delay=0.005) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0, host="h1", epoch=1)
        async with lease_kept(r, host="h1", incarnation="inc-1"), lease_kept(r, host="h2", incarnation="inc-2"):
            old = AnsweringClient(make_env(redis_url, sim, 0, (0,), 1))
            new = AnsweringClient(make_env(redis_url, sim, 0, (0,), 1, host_id="h2", host_incarnation="inc-2",
                                           epoch=2, handover=True))
            async with running(old):
                await wait_until(lambda: old.cluster.ready, timeout=20, message="the old process ready")
                await r.delete(KEYS.session_records(0))
                await r.hset(KEYS.handover, "0", _record(HandoverState.PREPARING))  # type: ignore[misc]
                async with running(new) as new_task:
                    await wait_until(lambda: new.cluster.ready, timeout=20, message="the successor ready")
                    sim.start_traffic(20.0, joins=1 / 3)
                    await wait_until(lambda: new.handover_stats["kept"] >= 3, timeout=10, message="events kept")
                    await r.hdel(KEYS.handover, "0")  # type: ignore[misc]
                    await asyncio.wait_for(new_task, 10)
                    assert new.cluster.exit_code == 75 and new.handover_stats["phase"] == "successor"
                    assert new.handled == 0 and new.handover_stats["dropped"] >= 3
                    sim.stop_traffic()
                    handling = await wait_until(lambda: _settled(sim), timeout=15, message="every event answered")
                assert await _session_epochs(r) == {1}  # the old process's records only
        assert handling["answered_once"] == handling["sent"] == old.handled, handling
