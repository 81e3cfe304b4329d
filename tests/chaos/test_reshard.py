"""Resharding without downtime (issue 16): 8 -> 16 -> 8 shards across 2 hosts under traffic, a rollback.

Traffic: 20 events a second at the simulator, half ``!ping <n>`` messages and half member joins, counted by the
simulator's handling referee (as in test_handover.py). ``letsfrag reshard --shards 16`` (the real CLI, signed)
prepares generation 2 (4 clusters of 4 shards, ids 2-5) beside generation 1 (clusters 0-1), switches all of it at
one instant once every new cluster is ready, and retires generation 1. The simulator serves both shard counts at
once and routes each guild's events to every live session whose ``(guild_id >> 22) % num_shards == shard_id``.

Contract assumed (letsfrag/contract/reshard.py): events ``reshard_started``, ``reshard_switched``, ``reshard_done``;
``{ns}:reshard`` is gone once it finished; the command exits 0 once switched and retired, 1 after a rollback.

One deployment for the three tests, in file order: every cluster execs ``programs/handover_bot.py``, whose
successors (``LETSFRAG_HANDOVER=1``, as a reshard's new clusters are) crash at start while a flag file exists. The
first test reshards with the flag (rolled back: generation 1 never stopped serving), the second reshards 8 -> 16
(generation 2, clusters 2-5), the third shrinks 16 -> 8 (generation 3, clusters 6-7) while the leader broker is
SIGKILLed mid-reshard (a standby finishes it); in the fourth the bot joins
so many guilds that the simulator (``--max-guilds-per-shard 10``) closes its shards with 4011, and the broker
reshards by itself to 16 (generation 4, clusters 8-11).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.exactly_once import (
    SecuredRehearsal,
    deployment_factory,
    letsfrag_cli,
    letsfrag_cli_popen,
    live_pids,
    traffic_off,
    traffic_on,
)
from support.waiting import scaled, wait_until_sync

from letsfrag.contract.keys import Keys
from letsfrag.contract.reshard import retired_cluster_keys

# one deployment (a module-scoped fixture) serves these tests, each going on from the generation the one before
# left: with `--dist loadgroup` they run on one xdist worker, in this order
pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("test_reshard")]

RATE = 20.0
JOINS = 0.5
#: 2 hosts, 8 shards in 2 clusters of 4 (one per host); each host has room for its new clusters beside its old one
RESHARD: dict[str, Any] = {"hosts": 2, "shards": 8, "shards_per_cluster": 4, "max_concurrency": 4,
                           "identify_window": 1.0, "lease_ttl": 3.0, "lease_grace": 1.0, "capacity": 3,
                           "rebalance": "manual", "namespace": "reshard", "sim_max_guilds_per_shard": 10}


HANDOVER_BOT = [sys.executable, str(Path(__file__).resolve().parent / "programs" / "handover_bot.py")]


@dataclass
class Resharded:
    deployment: SecuredRehearsal
    crash: Path


@pytest.fixture(scope="module")
def resharded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resharded]:
    root = tmp_path_factory.mktemp("reshard")
    crash = root / "crash.flag"
    factory = deployment_factory(root)
    make = next(factory)
    dep = make(**RESHARD, bot_command=HANDOVER_BOT, bot_env={"CHAOS_CRASH_FLAG": str(crash)}).start()
    try:
        wait_until_sync(dep.all_ready, timeout=60, interval=0.25, message="8 shards READY at start")
        yield Resharded(dep, crash)
    finally:
        with contextlib.suppress(StopIteration):
            next(factory)


def _assert_exactly_once(counts: dict[str, int], stats: dict[str, Any]) -> None:
    lost = counts["unanswered_live"] + counts["undeliverable"]
    assert lost == 0, f"lost {lost} of {counts['sent']} events: {counts}"
    assert counts["answered_twice_or_more"] == 0, counts
    assert counts["answered_once"] == counts["sent"] > 0 and counts["sent_join"] > 0, counts
    assert stats["identify_violations"]["total"] == 0, stats["identify_violations"]
    assert stats["duplicate_sessions"]["count"] == 0, stats["duplicate_sessions"]


def _reshard(dep: SecuredRehearsal, *args: str) -> Any:
    result = letsfrag_cli("reshard", *args, "--redis", dep.redis_url, "--namespace", dep.settings.namespace,
                          env={"LETSFRAG_SECRET": dep.secret}, timeout=120)
    assert "Traceback" not in result.stderr and dep.secret not in result.stdout + result.stderr
    return result


def _sessions(dep: SecuredRehearsal) -> dict[str, dict[str, Any]]:
    """Live sessions per shard count at the simulator."""
    return dict(dep.sim_stats().get("shard_counts", {}))


def _cluster_pids(dep: SecuredRehearsal, client: Any, clusters: range) -> dict[int, int]:
    keys = Keys(dep.settings.namespace)
    return {cid: int(client.hget(keys.cluster_status(cid), "pid") or 0) for cid in clusters}


def test_a_reshard_whose_new_clusters_crash_rolls_back(resharded: Resharded) -> None:
    dep = resharded.deployment
    keys = Keys(dep.settings.namespace)
    client = dep.redis_client()
    resharded.crash.touch()
    try:
        before = dep.assignment(client)
        old_pids = _cluster_pids(dep, client, range(2))
        layout = client.hgetall(keys.layout)
        traffic_on(dep, RATE, joins=JOINS)
        result = _reshard(dep, "--shards", "16", "--timeout", "40s")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "reshard plan: generation 1 -> 2 (--shards 16)" in result.stdout
        assert "failed: rolled back: cluster " in result.stderr and " of generation 2 failed on h" in result.stderr
        assert "generation 1 keeps serving" in result.stderr, result.stderr
        _assert_exactly_once(traffic_off(dep, more=RATE), dep.sim_stats())
        # generation 1 as before: same grants, same processes, the layout unchanged; nothing of generation 2 left
        assert dep.assignment(client) == before and _cluster_pids(dep, client, range(2)) == old_pids
        assert {k: v for k, v in client.hgetall(keys.layout).items() if k != "updated_at"} == \
            {k: v for k, v in layout.items() if k != "updated_at"}
        assert not client.exists(keys.reshard) and not client.hlen(keys.handover)
        wait_until_sync(lambda: set(_sessions(dep)) == {"8"}, timeout=10, message="only 8-shard sessions")
        assert _sessions(dep)["8"] == {"shards_ready": list(range(8)), "sessions": 8}
        left = [k for k in retired_cluster_keys(keys, list(range(2, 6))) if client.exists(k)]
        assert not left, f"generation 2's keys removed: {left}"
        rolled = [e for e in dep.events() if e.kind == "reshard_rolled_back"]
        assert rolled and rolled[-1].fields.get("cluster") in {"2", "3", "4", "5"}, rolled
    finally:
        resharded.crash.unlink(missing_ok=True)
        client.close()


def _leader(dep: SecuredRehearsal, client: Any) -> str | None:
    return client.get(Keys(dep.settings.namespace).leader)  # type: ignore[no-any-return]


def _reshard_through_a_leader_kill(dep: SecuredRehearsal, client: Any, shards: int, generation: int) -> None:
    """Start the reshard with a standby broker running; SIGKILL the leader (b0) once generation ``generation``
    is preparing: the standby (b1) takes the lead, finds the reshard record and finishes it. The command that
    asked b0 follows the progress in Redis and, with no answer from b0, concludes from Redis that it is done."""
    keys = Keys(dep.settings.namespace)
    dep.start_broker("b1")
    wait_until_sync(lambda: client.get(keys.broker_role("b1")) == "standby", timeout=15, interval=0.1,
                    message="b1 runs as a standby")
    assert _leader(dep, client) == "b0"
    command = letsfrag_cli_popen("reshard", "--shards", str(shards), "--timeout", "40s", "--redis", dep.redis_url,
                                 "--namespace", dep.settings.namespace, env={"LETSFRAG_SECRET": dep.secret})
    try:
        # preparing: the record written and its event too (b0 writes them one after the other; a kill between the
        # two loses the event, which happened beside a CPU hog)
        wait_until_sync(lambda: client.exists(keys.reshard) and any(
            e.kind == "reshard_started" and f"generation {generation}:" in e.message for e in dep.events()),
            timeout=20, interval=0.05, message=f"generation {generation} preparing")
        dep.kill_broker("b0")
        wait_until_sync(lambda: _leader(dep, client) == "b1", timeout=15, interval=0.1, message="b1 leads")

        def finished() -> bool:
            layout = client.hgetall(keys.layout)
            return layout.get("generation") == str(generation) and not client.exists(keys.reshard)

        wait_until_sync(finished, timeout=60, interval=0.25, message=f"generation {generation} switched and retired")
        out, err = command.communicate(timeout=scaled(20))
    finally:
        if command.poll() is None:
            command.kill()
            command.communicate()
    assert "Traceback" not in out + err and dep.secret not in out + err, err
    # the answer would have come from b0, dead: the command concludes from Redis once the reshard ended there
    assert command.returncode == 0, out + err
    assert f"ok: generation {generation} serves alone ({shards} shards; the broker that was asked stopped " \
           "answering; read from Redis)" in out, out + err
    assert f"generation {generation}: switched; stopping generation {generation - 1}'s" in err, err


def _reshard_under_traffic(dep: SecuredRehearsal, *, shards: int, generation: int, old: range, new: range,
                           kill_leader: bool = False) -> None:
    """Reshard to ``shards`` (generation ``generation``: clusters ``new`` replace ``old``) under traffic and check
    the issue's ending: 0 lost, 0 twice, 0 identify violations, one live session per new shard and no other, no
    process or key of the old generation left. With ``kill_leader`` the leader broker dies mid-reshard."""
    keys = Keys(dep.settings.namespace)
    client = dep.redis_client()
    try:
        old_pids = _cluster_pids(dep, client, old)
        assert all(old_pids.values()), old_pids
        before = set(_sessions(dep))
        traffic_on(dep, RATE, joins=JOINS)
        started, started_wall = time.monotonic(), time.time()
        if kill_leader:
            _reshard_through_a_leader_kill(dep, client, shards, generation)
        else:
            result = _reshard(dep, "--shards", str(shards), "--timeout", "40s")
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"reshard plan: generation {generation - 1} -> {generation} (--shards {shards})" in result.stdout
            assert f"switched to generation {generation} ({shards} shards)" in result.stderr, result.stderr
            assert f"ok: generation {generation} serves alone" in result.stdout, result.stdout
        took = time.monotonic() - started
        # one more second of traffic on the new generation alone: 0 lost, 0 twice, 0 identify violations
        counts = traffic_off(dep, more=RATE)
        _assert_exactly_once(counts, dep.sim_stats())
        # one live session per shard of the new generation, none of the old one
        wait_until_sync(lambda: set(_sessions(dep)) == {str(shards)}, timeout=10,
                        message=f"only {shards}-shard sessions left (before: {before})")
        final = _sessions(dep)[str(shards)]
        assert final == {"shards_ready": list(range(shards)), "sessions": shards}, final
        # the new generation in the layout and the assignment; no process or key of the old one left
        layout = client.hgetall(keys.layout)
        assert (layout["generation"], layout["shard_count"], layout["cluster_base"]) == \
            (str(generation), str(shards), str(new.start)), layout
        assert sorted(int(c) for c in client.hkeys(keys.assignment)) == list(new)
        hosts = {dep.assignment(client)[cid][0] for cid in new}
        assert hosts == {"h0", "h1"}, "the new clusters run across both hosts"
        assert not client.exists(keys.reshard) and not client.hlen(keys.handover)
        assert not live_pids(list(old_pids.values())), f"the old generation's processes exited: {old_pids}"
        left = [k for k in retired_cluster_keys(keys, list(old)) if client.exists(k)]
        assert not left, f"the old generation's keys removed: {left}"
        kinds = [e.kind for e in dep.events() if e.ts >= started_wall]
        for kind in ("reshard_started", "reshard_switched", "reshard_done"):
            assert kind in kinds, kinds[-30:]
        assert "reshard_rolled_back" not in kinds
        # also when the old generation's processes were a reshard's successors (16 -> 8) and the leader died
        assert "cluster_fenced" not in kinds, "the old generation was stopped gracefully, not fenced"
        print(f"reshard to {shards} shards (generation {generation}) in {took:.1f} s: handling {counts}")
    finally:
        client.close()


def test_reshard_8_to_16_across_two_hosts_under_traffic(resharded: Resharded) -> None:
    _reshard_under_traffic(resharded.deployment, shards=16, generation=2, old=range(0, 2), new=range(2, 6))


def test_reshard_16_back_to_8_shrinks_the_same_way_through_a_leader_broker_kill(resharded: Resharded) -> None:
    """Shrinking, and the leader broker is SIGKILLed while generation 3 prepares: the standby finishes it."""
    _reshard_under_traffic(resharded.deployment, shards=8, generation=3, old=range(2, 6), new=range(6, 8),
                           kill_leader=True)


def test_a_4011_reshards_by_itself_and_the_guilds_are_served_again(resharded: Resharded) -> None:
    dep = resharded.deployment
    keys = Keys(dep.settings.namespace)
    client = dep.redis_client()
    try:
        started_wall = time.time()
        assert client.hget(keys.layout, "generation") == "3"
        added = dep.sim_post("/_sim/guilds?count=24")  # 88 guilds on 8 shards: 11 each, over the maximum of 10
        assert added["guilds"] == 88, added

        def resharded_alone() -> bool:
            layout = client.hgetall(keys.layout)
            return (layout.get("generation"), layout.get("shard_count")) == ("4", "16") and \
                not client.exists(keys.reshard) and set(_sessions(dep)) == {"16"}

        wait_until_sync(resharded_alone, timeout=90, interval=0.25, message="generation 4 (16 shards) serves alone")
        events = [e for e in dep.events() if e.ts >= started_wall]
        kinds = [e.kind for e in events]
        assert "cluster_failed" in kinds and "sharding_required" in kinds, kinds[-30:]
        reason = next(e for e in events if e.kind == "sharding_required")
        assert "8 -> 16 shards (generation 4)" in reason.message, reason.message
        assert "reshard_done" in kinds and "reshard_rolled_back" not in kinds
        assert sorted(int(c) for c in client.hkeys(keys.assignment)) == [8, 9, 10, 11]
        assert _sessions(dep)["16"] == {"shards_ready": list(range(16)), "sessions": 16}
        # every guild is served again, exactly once
        traffic_on(dep, RATE, joins=JOINS)
        _assert_exactly_once(traffic_off(dep, more=RATE), dep.sim_stats())
        left = [k for k in retired_cluster_keys(keys, [6, 7]) if client.exists(k)]
        assert not left, f"generation 3's keys removed: {left}"
    finally:
        client.close()
