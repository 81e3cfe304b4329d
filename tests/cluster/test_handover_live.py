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
from cluster_support import KEYS, AnsweringClient, grant, lease_kept, make_env, running, write_layout
from helpers import wait_until

from letsfrag.cluster.handover_gate import GatePhase
from letsfrag.handover import GATEWAY_PARAM, IPC_PROMOTE, HandoverRecord, HandoverState
from letsfrag.ipc import IpcChannel
from letsfrag.sim import Simulator

RATE = 20.0  # events per second, a third of them member joins


def _record(state: HandoverState) -> str:
    now = time.time()
    return HandoverRecord(cluster=0, host="h2", epoch=2, from_host="h1", from_epoch=1, reason="restart",
                          state=state, started=now, deadline=now + 60).to_json()


async def _session_epochs(r: aioredis.Redis) -> set[int]:
    records = await r.hgetall(KEYS.session_records(0))  # type: ignore[misc]
    return {json.loads(value)["epoch"] for value in records.values()}


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
            old = AnsweringClient(make_env(redis_url, sim, 0, (0, 1), 2), ipc_socket=old_child)
            new = AnsweringClient(make_env(redis_url, sim, 0, (0, 1), 2, host_id="h2", host_incarnation="inc-2",
                                           epoch=2, handover=True), ipc_socket=new_child)
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
                    await wait_until(lambda: len(new._lf_gate.kept) >= 3, timeout=10,
                                     message="the successor keeps claimable events in its gate")
                    assert new.handled == 0 and new._lf_gate.phase is GatePhase.SUCCESSOR
                    assert await r.hlen(KEYS.shard_status(0)) == 2  # type: ignore[misc]  # the old one's
                    assert await _session_epochs(r) == {1}  # the successor writes no session record yet
                    # the broker's switch: the assignment names the successor, the record says switched
                    async with r.pipeline(transaction=True) as pipe:
                        pipe.hset(KEYS.assignment, "0", json.dumps({"host": "h2", "epoch": 2}))
                        pipe.hset(KEYS.handover, "0", _record(HandoverState.SWITCHED))
                        await pipe.execute()
                    switched_at = time.monotonic()
                    await new_ipc.send(IPC_PROMOTE)
                    await wait_until(lambda: new._lf_gate.phase is GatePhase.OWNER, timeout=5,
                                     message="the successor owns the cluster after promote")
                    # the old host's supervisor stops the old process gracefully, then the broker deletes the record
                    await old_ipc.send("stop", reason="handed over")
                    await asyncio.wait_for(old_task, 15)
                    stopped_at = time.monotonic()
                    assert old.cluster.exit_code == 0 and old._lf_gate.phase is GatePhase.HANDED_OVER
                    await r.hdel(KEYS.handover, "0")  # type: ignore[misc]
                    await wait_until(lambda: new._lf_gate.phase is GatePhase.EXCLUSIVE, timeout=5,
                                     message="the successor dispatches everything once the record is gone")
                    await wait_until(lambda: sum(t > stopped_at for t in new.handled_at) >= 10, timeout=15,
                                     message="the new process handles events after the old one is gone")
                    async def new_records() -> bool:
                        return await _session_epochs(r) == {2}

                    await wait_until(new_records, timeout=5, message="the new owner's session records")
                    sim.stop_traffic()

                    def settled() -> dict[str, int] | None:
                        handling = sim.stats()["handling"]
                        done = handling["answered_once"] + handling["answered_twice_or_more"]
                        return handling if done + handling["undeliverable"] >= handling["sent"] else None

                    handling = await wait_until(settled, timeout=15, message="every event answered")
                    assert not new_task.done()
            assert handling["answered_twice_or_more"] == 0, handling
            assert handling["undeliverable"] == 0 and handling["unanswered_live"] == 0, handling
            assert handling["answered_once"] == handling["sent"] and handling["sent_join"] > 0, handling
            assert old.handled + new.handled == handling["sent"]
            assert old.handled > 0 and min(new.handled_at) >= switched_at  # no user handler before the switch
            assert new.claim_stats["lost"] > 0  # kept events the old process had handled lost their claims
            assert sim.stats()["identify_violations"]["total"] == 0
