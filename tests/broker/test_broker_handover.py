"""Planned handovers through a real broker and a real redis-server; the test plays the supervisors (FakeHost with
``handovers=True`` writes ``successors`` reports and confirms stops as the protocol says): restart, rolling
restart, drain, a leaving host, rollbacks, the gates and a broker failover mid-handover."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from support.broker import Deployment, make_config
from support.waiting import wait_until

from letsfrag.cli.main import build_parser
from letsfrag.cli.operator import run_drain, run_restart
from letsfrag.contract.handover import HANDOFF_BLOCKED_FIELD


def _args(*argv: str) -> Any:
    return build_parser().parse_args(list(argv))


async def _one_host(dep: Deployment, **host: Any) -> None:
    await dep.broker(make_config(dep.url, hosts={"expected": 1}), handover_timeout=host.pop("timeout", 20.0))
    await dep.host("h1", handovers=True, **host)
    await wait_until(lambda: dep.settled({"h1": 4}), message="4 clusters on h1")


async def _kinds(dep: Deployment, *kinds: str) -> list[tuple[str, str]]:
    entries = await dep.redis.xrange(dep.keys.events)
    return [(d["kind"], d.get("cluster", "")) for _, d in entries if d.get("kind") in kinds]


async def test_restart_of_one_cluster_hands_over_in_place(deployment: Deployment,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    dep = deployment
    await _one_host(dep)
    before = (await dep.assignment())[2]
    code = await run_restart(_args("restart", "--cluster", "2", "--redis", dep.url, "--timeout", "20s"))
    out = capsys.readouterr()
    assert code == 0, out
    host, epoch = (await dep.assignment())[2]
    assert host == "h1" and epoch > before[1]
    assert f"switched to h1 (epoch {epoch}) in " in out.out
    # the progress lines come from a poll of the handover record (every PROGRESS_INTERVAL): a switch within 0.1 s
    # may pass between two polls (seen beside a CPU hog), so each line shown must name the new run, none is required
    assert out.err.startswith("restarting cluster 2"), out.err
    progress = [line for line in out.err.splitlines() if "handing over to" in line or "switched to" in line]
    assert all(f"to h1 (epoch {epoch})" in line for line in progress), out.err
    await wait_until(lambda: _no_records(dep), message="the record is deleted once the old run stopped")
    assert (2, epoch) in dep.hosts["h1"].promoted and dep.hosts["h1"].running[2] == epoch
    assert ("stop", 2, "h1", before[1]) in dep.ledger.history
    assert await _kinds(dep, "handover_started", "handover_switched", "handover_done") == [
        ("handover_started", "2"), ("handover_switched", "2"), ("handover_done", "2")]
    switched = await dep.events("handover_switched")
    assert float(switched[0]["overlap"]) >= 0
    assert not dep.ledger.violations
    assert not await dep.events("cluster_revoked")


async def _no_records(dep: Deployment) -> bool:
    return await dep.redis.hlen(dep.keys.handover) == 0  # type: ignore[no-any-return]


async def test_a_failed_successor_rolls_back_and_the_command_exits_1(deployment: Deployment,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    dep = deployment
    await _one_host(dep, successor="fail")
    before = await dep.assignment()
    code = await run_restart(_args("restart", "--cluster", "1", "--redis", dep.url, "--timeout", "20s"))
    err = capsys.readouterr().err
    assert code == 1
    assert "cluster 1: rolled back (the successor failed: exit code 1)" in err
    assert await dep.assignment() == before, "the old process keeps serving"
    await wait_until(lambda: _no_records(dep), message="the record is gone")
    await wait_until(lambda: not dep.hosts["h1"].successors, message="the successor is stopped")
    rolled = await dep.events("handover_rolled_back")
    assert len(rolled) == 1 and "exit code 1" in rolled[0]["why"]
    # a rolled-back epoch is never used again
    epoch = int(await dep.redis.get(dep.keys.epoch))
    assert epoch > max(e for _, e in before.values())


async def test_a_successor_never_ready_rolls_back_at_the_deadline(deployment: Deployment,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    dep = deployment
    await _one_host(dep, successor="never", timeout=1.0)
    before = await dep.assignment()
    code = await run_restart(_args("restart", "--cluster", "0", "--redis", dep.url, "--timeout", "20s"))
    assert code == 1
    assert "cluster 0: rolled back (the successor was not ready within 1s)" in capsys.readouterr().err
    assert await dep.assignment() == before


async def test_the_identify_budget_gate_refuses_with_the_numbers(deployment: Deployment,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    dep = deployment
    await _one_host(dep)
    await dep.redis.hset(dep.keys.identify("budget"), mapping={"total": 1000, "remaining": 107})
    code = await run_restart(_args("restart", "--cluster", "3", "--redis", dep.url, "--timeout", "10s"))
    assert code == 1
    assert ("107 session starts remain, 100 are the reserve, and its 8 shard(s) need 8"
            in capsys.readouterr().err)
    assert not await dep.events("handover_started")


async def test_rolling_restart_one_cluster_after_the_other(deployment: Deployment,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    dep = deployment
    await dep.broker(make_config(dep.url, hosts={"expected": 2}, rebalance="manual"))
    await dep.host("h1", handovers=True)
    await dep.host("h2", handovers=True)
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}), message="2 + 2")
    before = await dep.assignment()
    mine = sorted(c for c, (h, _) in before.items() if h == "h1")
    code = await run_restart(_args("restart", "--host", "h1", "--rolling", "--redis", dep.url, "--timeout", "30s"))
    out = capsys.readouterr()
    assert code == 0, out
    assert "2 of 2 cluster(s) handed over" in out.out
    assert f"cluster {mine[0]}: switched to h1 " in out.err and "(1 of 2)" in out.err and "(2 of 2)" in out.err
    after = await dep.assignment()
    for cluster in mine:
        assert after[cluster][0] == "h1" and after[cluster][1] > before[cluster][1]
    assert all(after[c] == before[c] for c in before if c not in mine)
    order = [k for k in await _kinds(dep, "handover_started", "handover_switched")]
    assert order[:4] == [("handover_started", str(mine[0])), ("handover_switched", str(mine[0])),
                         ("handover_started", str(mine[1])), ("handover_switched", str(mine[1]))], order
    assert await dep.redis.hget(dep.keys.broker, "operation") is None
    assert not dep.ledger.violations


async def test_drain_hands_every_cluster_over(deployment: Deployment) -> None:
    dep = deployment
    await dep.broker(make_config(dep.url, hosts={"expected": 2}, rebalance="manual"), command_wait=15.0)
    await dep.host("h1", handovers=True)
    await dep.host("h2", handovers=True)
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}), message="2 + 2")
    assert await run_drain(_args("drain", "h1", "--redis", dep.url, "--timeout", "30s")) == 0
    assert await dep.counts() == {"h2": 4}
    assert await _no_records(dep)
    assert len(dep.hosts["h2"].promoted) == 2
    done = await dep.events("handover_done")
    assert len(done) == 2 and {d["reason"] for d in done} == {"drain"}
    assert not await dep.events("cluster_revoked") and not await dep.events("cluster_moved")
    assert not dep.ledger.violations


async def test_a_leaving_host_hands_over_or_says_it_cannot(deployment: Deployment) -> None:
    dep = deployment
    await dep.broker(make_config(dep.url, hosts={"expected": 2}, rebalance="manual"))
    h1 = await dep.host("h1", capacity=4, handovers=True)
    await dep.host("h2", capacity=3, handovers=True)
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}), message="2 + 2")
    await h1.leave_by_handover()
    # h2 has room for one more: one cluster is handed over, the other cannot go anywhere
    blocked = await wait_until(lambda: dep.redis.hget(dep.keys.host("h1"), HANDOFF_BLOCKED_FIELD),
                               message="handoff_blocked on h1")
    assert "no other host has room" in blocked
    await wait_until(lambda: _no_records(dep), message="the handover finished")
    assert await dep.counts() == {"h1": 1, "h2": 3}
    done = await dep.events("handover_done")
    assert len(done) == 1 and done[0]["reason"] == "leave"
    assert len(await dep.events("handoff_blocked")) == 1
    assert not dep.ledger.violations


async def test_a_new_leader_continues_a_handover_it_finds(deployment: Deployment) -> None:
    dep = deployment
    config = make_config(dep.url, hosts={"expected": 1}, leader_ttl=1.0)
    first = await dep.broker(config, broker_id="b1", handover_timeout=30.0)
    await wait_until(lambda: first.is_leader, message="b1 leads")
    second = await dep.broker(config, broker_id="b2", handover_timeout=30.0)
    h1 = await dep.host("h1", handovers=True, successor="never")
    await wait_until(lambda: dep.settled({"h1": 4}), message="4 clusters on h1")
    first.reconciler.request_restart(1)  # type: ignore[union-attr]
    first.wake()
    raw = await wait_until(lambda: dep.redis.hget(dep.keys.handover, "1"), message="a preparing record")
    epoch = json.loads(raw)["epoch"]
    await first.close()  # releases the lock: b2 takes over
    await wait_until(lambda: second.is_leader, message="b2 leads")
    h1.successor = "ready"
    for entry in h1.successors.values():
        entry[2] = "starting"
    await wait_until(lambda: _assigned_at(dep, 1, epoch), message="b2 switched the handover b1 began")
    await wait_until(lambda: _no_records(dep), message="and finished it")
    assert h1.running[1] == epoch and (1, epoch) in h1.promoted
    assert not dep.ledger.violations
    assert await dep.events("handover_continued")


async def _assigned_at(dep: Deployment, cluster: int, epoch: int) -> bool:
    return (await dep.assignment()).get(cluster) == ("h1", epoch)


async def test_on_join_rebalance_hands_over(deployment: Deployment) -> None:
    dep = deployment
    await dep.broker(make_config(dep.url, hosts={"expected": 1}))
    await dep.host("h1", handovers=True)
    await wait_until(lambda: dep.settled({"h1": 4}), message="4 clusters on h1")
    await dep.host("h2", handovers=True)
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}), message="2 + 2 after the join")
    await wait_until(lambda: _no_records(dep), message="the handovers finished")
    done = await dep.events("handover_done")
    assert len(done) == 2 and {d["reason"] for d in done} == {"rebalance"}
    assert len(dep.hosts["h2"].promoted) == 2
    assert not await dep.events("cluster_revoked") and not dep.ledger.violations


async def test_the_death_of_the_target_rolls_the_drain_back(deployment: Deployment) -> None:
    dep = deployment
    broker = await dep.broker(make_config(dep.url, hosts={"expected": 2}, rebalance="manual"), command_wait=0.2)
    await dep.host("h1", handovers=True)
    h2 = await dep.host("h2", handovers=True, successor="never")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}), message="2 + 2")
    before = await dep.assignment()
    assert broker._commands is not None
    await broker._commands.handle({"action": "drain", "host": "h1"})
    raw = await wait_until(lambda: dep.redis.hvals(dep.keys.handover), message="a preparing handover")
    cluster = int(next(c for c, v in (await dep.redis.hgetall(dep.keys.handover)).items() if v == raw[0]))
    await h2.kill()
    rolled = await wait_until(lambda: dep.events("handover_rolled_back"), message="the rollback")
    assert "the target host h2 is not alive" in rolled[0]["why"]
    assert (await dep.assignment())[cluster] == before[cluster], "h1 keeps serving it"
    assert await dep.redis.hget(dep.keys.host("h2"), "state") == "lost"


async def test_a_rolling_restart_publishes_its_progress(deployment: Deployment) -> None:
    dep = deployment
    broker = await dep.broker(make_config(dep.url, hosts={"expected": 1}))
    await dep.host("h1", handovers=True, ready_after=8)
    await wait_until(lambda: dep.settled({"h1": 4}), message="4 clusters on h1")
    assert broker._commands is not None
    task = asyncio.create_task(broker._commands.handle({"action": "rolling_restart", "host": "h1", "wait": 30}))
    raw = await wait_until(lambda: dep.redis.hget(dep.keys.broker, "operation"), message="the operation field")
    op = json.loads(raw)
    assert op["kind"] == "rolling" and op["host"] == "h1" and op["total"] == 4 and op["cluster"] == 0
    seen = await wait_until(lambda: _op_done(dep, 2), message="2 of 4")
    assert seen["cluster"] == 2
    reply = await task
    assert reply["ok"] and len(reply["steps"]) == 4, reply
    assert await dep.redis.hget(dep.keys.broker, "operation") is None


async def _op_done(dep: Deployment, done: int) -> dict[str, Any] | None:
    raw = await dep.redis.hget(dep.keys.broker, "operation")
    op = json.loads(raw) if raw else None
    return op if op is not None and op["done"] == done else None


async def test_an_unreadable_handover_record_is_deleted(deployment: Deployment) -> None:
    dep = deployment
    await _one_host(dep)
    await dep.redis.hset(dep.keys.handover, mapping={"2": "{not json", "9x": "{}"})
    repaired = await wait_until(lambda: dep.events("handover_repaired"), message="the repair event")
    assert "'2'" in repaired[0]["message"] and "'9x'" in repaired[0]["message"]
    await wait_until(lambda: _no_records(dep), message="the fields are gone")
    code = await run_restart(_args("restart", "--cluster", "2", "--redis", dep.url, "--timeout", "20s"))
    assert code == 0, "the cluster can be handed over again"


async def test_a_drain_the_budget_cannot_pay_says_so(deployment: Deployment,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    dep = deployment
    await dep.broker(make_config(dep.url, hosts={"expected": 2}, rebalance="manual"), command_wait=10.0)
    await dep.host("h1", handovers=True)
    await dep.host("h2", handovers=True)
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}), message="2 + 2")
    await dep.redis.hset(dep.keys.identify("budget"), mapping={"total": 100, "remaining": 12})
    before = await dep.assignment()
    assert await run_drain(_args("drain", "h1", "--redis", dep.url, "--timeout", "20s")) == 1
    err = capsys.readouterr().err
    assert "cannot finish draining h1: the identify budget cannot pay a handover of cluster" in err
    assert "12 session starts remain, 10 are the reserve, and its 8 shard(s) need 8" in err
    assert await dep.assignment() == before
    assert len(await dep.events("handover_refused")) == 1


async def test_an_older_supervisor_gets_the_host_command(deployment: Deployment) -> None:
    dep = deployment
    broker = await dep.broker(make_config(dep.url, hosts={"expected": 1}))
    await dep.host("h1")  # no successors field: it does not take part in handovers
    await wait_until(lambda: dep.settled({"h1": 4}), message="4 clusters on h1")
    assert broker._commands is not None
    reply = await broker._commands.handle({"action": "restart", "cluster": 1, "wait": 5})
    assert reply["ok"] is False and reply["fallback"] == "host" and reply["host"] == "h1", reply
    assert "does not take part in handovers" in reply["message"]
    rolling = await broker._commands.handle({"action": "rolling_restart", "host": "h1", "wait": 5})
    assert rolling["fallback"] == "host"
    bad = await broker._commands.handle({"action": "restart", "cluster": 99, "wait": 5})
    assert bad["ok"] is False and "not in the layout (clusters 0-3)" in bad["message"]
    assert not await dep.events("handover_started")
