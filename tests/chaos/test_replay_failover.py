"""Unplanned failures lose nothing and handle nothing twice: the next process of a cluster replays its
predecessor's sessions (RESUME on side connections) through the claims.

Every test runs 20 events/s (30 % member joins) through a 2-host deployment (8 shards, 4 clusters), disturbs it
and ends with: each event answered exactly once (0 lost, 0 twice), 0 identify violations, a ``session_replayed``
event per shard whose process went away (no ``replay_refused``/``replay_failed``), no IDENTIFY beyond the fresh
sessions of the moved shards, every shard READY, and (the fixture) no process left behind. The first tests
disturb it between two events; the ``while_handlers_run`` ones run a bot that answers 1.5 s after each event and
kill or freeze the host (or SIGKILL one cluster process, restarted in place at the same epoch) while dozens of
handlers run: their claims are still pending, the new owner (or the new run, which its supervisor told the old one
is dead) takes them over in its replay, and a woken process's late reply is the same message (its nonce) as the
new owner's.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.chaos import FAULTY_BOT, SLOW_BOT, cluster_pids_by_id
from support.exactly_once import (
    SecuredRehearsal,
    all_clusters_ready,
    deployment_factory,
    handling,
    live_pids,
    start_traffic,
    traffic_off,
    traffic_on,
)
from support.waiting import wait_until_sync

from letsfrag.claims import DONE, PENDING, ClaimValue
from letsfrag.contract.keys import Keys

pytestmark = pytest.mark.chaos

RATE = 20.0
JOINS = 0.3
SHAPE = {"hosts": 2, "shards": 8, "shards_per_cluster": 2, "max_concurrency": 4, "identify_window": 1.0,
         "lease_ttl": 3.0, "lease_grace": 1.0, "rebalance": "manual"}


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[..., SecuredRehearsal]]:
    yield from deployment_factory(tmp_path)


def _traffic_flowing(deployment: SecuredRehearsal) -> None:
    wait_until_sync(deployment.all_ready, timeout=60, interval=0.25, message="8 shards READY")
    traffic_on(deployment, RATE, joins=JOINS)


def _between_events(deployment: SecuredRehearsal, fault: Callable[[], object]) -> None:
    """Inject ``fault`` while no event is in flight, then resume the traffic at once: everything sent from the
    fault on — during detection, takeover and re-identify — must be replayed."""
    traffic_off(deployment)
    fault()
    start_traffic(deployment, RATE, joins=JOINS)


def _replays_since(deployment: SecuredRehearsal, since: float) -> list[str]:
    return [e.kind for e in deployment.events() if e.ts >= since and e.kind.startswith(("session_replayed",
                                                                                        "replay_"))]


@dataclass(frozen=True)
class Before:
    """The run just before a fault: the sessions it must replay, the IDENTIFYs so far, the time."""

    sessions: int
    identifies: int
    since: float


def _before(deployment: SecuredRehearsal, sessions: int) -> Before:
    return Before(sessions, deployment.sim_stats()["identifies"]["total"], time.time())


def _before_h0_goes(deployment: SecuredRehearsal, client: Any) -> Before:
    """Before h0 (or its supervisor) goes: its clusters' shards move to h1, each replayed there."""
    moved = [cid for cid, (host, _) in deployment.assignment(client).items() if host == "h0"]
    assert moved, "h0 runs clusters"
    return _before(deployment, len(moved) * deployment.settings.shards_per_cluster)


def _ends_with_nothing_lost(deployment: SecuredRehearsal, before: Before) -> dict[str, int]:
    """Wait for a session_replayed event per session ``before`` names, run traffic a little longer, then check the
    whole run: nothing lost or twice, and a fresh IDENTIFY only for each replayed session."""
    since, replays = before.since, before.sessions
    try:
        wait_until_sync(lambda: len(_replays_since(deployment, since)) >= replays, timeout=20, interval=0.2,
                        message=f"{replays} sessions replayed")
    except AssertionError:
        print("\n".join(f"{e.kind}: {e.message}" for e in deployment.events() if e.ts >= since))
        raise
    counts = traffic_off(deployment, more=20, message="traffic after the takeover")
    if counts["unanswered_live"]:  # a slow handler of a replayed event may answer after the answer timeout
        counts = dict(wait_until_sync(lambda: (h := handling(deployment))["answered_once"]
                                      + h["answered_twice_or_more"] >= h["sent"] and h,
                                      timeout=20, interval=0.2, message="every event answered"))
    stats = deployment.sim_stats()
    story = _replays_since(deployment, since)
    print(f"handling {counts}, replays {story}, resumes {stats['resumes']}, drains {stats['replay_drains']}")
    assert counts["answered_twice_or_more"] == 0, counts
    assert counts["unanswered_live"] == 0 and counts["undeliverable"] == 0, counts
    assert counts["answered_once"] == counts["sent"] and counts["sent_join"] > 0, counts
    assert story == ["session_replayed"] * replays, story
    assert stats["identifies"]["total"] - before.identifies == before.sessions, stats["identifies"]
    assert stats["identify_violations"]["total"] == 0, stats["identify_violations"]
    wait_until_sync(deployment.all_ready, timeout=30, interval=0.25, message="every shard READY at the end")
    return counts


def test_host_sigkill_loses_nothing(deploy: Callable[..., SecuredRehearsal]) -> None:
    deployment = deploy(**SHAPE).start()
    client = deployment.redis_client()
    try:
        _traffic_flowing(deployment)
        before = _before_h0_goes(deployment, client)
        _between_events(deployment, lambda: deployment.kill_host("h0"))
        wait_until_sync(lambda: all_clusters_ready(deployment, client, host="h1"), timeout=40, interval=0.2,
                        message="h0's clusters READY on h1")
        _ends_with_nothing_lost(deployment, before)
    finally:
        client.close()


def test_host_frozen_past_its_lease_loses_nothing(deploy: Callable[..., SecuredRehearsal]) -> None:
    """SIGSTOP past the lease, SIGCONT after the takeover; the simulator heartbeat (10 s) is longer than the lease,
    so the frozen sessions are still live when the successor RESUMEs (takes over) them."""
    deployment = deploy(**SHAPE, sim_heartbeat_interval=10.0).start()
    client = deployment.redis_client()
    try:
        _traffic_flowing(deployment)
        frozen = deployment.cluster_pids("h0")
        before = _before_h0_goes(deployment, client)
        assert frozen
        _between_events(deployment, lambda: deployment.freeze_host("h0"))
        wait_until_sync(lambda: all_clusters_ready(deployment, client, host="h1"), timeout=40, interval=0.1,
                        message="h0's clusters READY on h1")
        deployment.thaw_host("h0")
        wait_until_sync(lambda: not live_pids(frozen), timeout=30, message="woken cluster processes exit")
        _ends_with_nothing_lost(deployment, before)
    finally:
        client.close()


def test_cluster_crash_restarted_in_place_loses_nothing(deploy: Callable[..., SecuredRehearsal],
                                                        tmp_path: Path) -> None:
    victim, flag = 1, tmp_path / "crash.flag"
    deployment = deploy(**SHAPE, bot_command=FAULTY_BOT,
                        bot_env={"CHAOS_FAULT": "crash_on_flag", "CHAOS_CLUSTER": str(victim),
                                 "CHAOS_FLAG": str(flag)}).start()
    client = deployment.redis_client()
    try:
        _traffic_flowing(deployment)
        assigned = deployment.assignment(client)
        before = _before(deployment, deployment.settings.shards_per_cluster)
        _between_events(deployment, flag.touch)  # the victim exits 1 at once; its supervisor restarts it in place
        wait_until_sync(lambda: not flag.exists(), timeout=10, interval=0.05, message="the victim crashed")
        wait_until_sync(lambda: all_clusters_ready(deployment, client), timeout=40, interval=0.2,
                        message="the crashed cluster READY again")
        assert deployment.assignment(client) == assigned, "restarted in place: same host, same epoch"
        _ends_with_nothing_lost(deployment, before)
        restarts = [e for e in deployment.events() if e.ts >= before.since and e.kind == "cluster_crash"]
        assert restarts, "the supervisor saw the crash"
    finally:
        client.close()


def test_supervisor_sigkill_loses_nothing(deploy: Callable[..., SecuredRehearsal]) -> None:
    """Only the supervisor dies: its clusters exit by themselves leaving their sessions resumable (not ended with
    1000, the cause of the old flake), and the new owners replay them after the lease."""
    deployment = deploy(**SHAPE).start()
    client = deployment.redis_client()
    try:
        _traffic_flowing(deployment)
        before = _before_h0_goes(deployment, client)
        orphans = deployment.kill_supervisor("h0")
        assert orphans
        wait_until_sync(lambda: not live_pids(orphans), timeout=5, interval=0.05,
                        message="h0's clusters exit by themselves")
        wait_until_sync(lambda: all_clusters_ready(deployment, client, host="h1"), timeout=40, interval=0.2,
                        message="h0's clusters READY on h1")
        _ends_with_nothing_lost(deployment, before)
    finally:
        client.close()


SLOW = {"bot_command": SLOW_BOT, "bot_env": {"SLOW_SECONDS": "1.5"}}


def _claims(deployment: SecuredRehearsal, client: Any) -> dict[str, ClaimValue | None]:
    """Every claim key and its value."""
    keys = list(client.scan_iter(Keys(deployment.settings.namespace).claim("*"), count=1000))
    return dict(zip(keys, (ClaimValue.parse(v) for v in client.mget(keys)), strict=True)) if keys else {}


def _pending_of(deployment: SecuredRehearsal, client: Any, owners: set[tuple[int, int]]) -> set[str]:
    """The claims still pending for these (cluster, epoch) owners: handlers running now."""
    return {key for key, value in _claims(deployment, client).items()
            if value is not None and value.state == PENDING and (value.cluster, value.epoch) in owners}


def _disturb_while_handlers_run(deployment: SecuredRehearsal, client: Any, fault: Callable[[], object]
                                ) -> tuple[set[str], set[tuple[int, int]]]:
    """Wait until h0's processes have handlers running (pending claims), then inject ``fault`` at once, the
    traffic still flowing; return those claims and h0's owners."""
    owners = {(cid, epoch) for cid, (host, epoch) in deployment.assignment(client).items() if host == "h0"}
    pending = wait_until_sync(lambda: _pending_of(deployment, client, owners), timeout=10, interval=0.05,
                              message="handlers running on h0")
    fault()
    return set(pending), owners


def _taken_over(deployment: SecuredRehearsal, client: Any, pending: set[str], owners: set[tuple[int, int]]
                ) -> dict[str, int]:
    """What became of the claims pending at the fault: done by a new owner (taken over), done by the old one (its
    handler finished before it died or after it woke), still pending (lost: the bug this guards against)."""
    claims = _claims(deployment, client)
    outcome = {"taken_over": 0, "done_by_old": 0, "still_pending": 0}
    for key in pending:
        value = claims.get(key)
        if value is None or value.state != DONE:
            outcome["still_pending"] += 1
        elif (value.cluster, value.epoch) in owners:
            outcome["done_by_old"] += 1
        else:
            outcome["taken_over"] += 1
    return outcome


def test_host_sigkill_while_handlers_run_loses_nothing(deploy: Callable[..., SecuredRehearsal]) -> None:
    deployment = deploy(**SHAPE, **SLOW).start()
    client = deployment.redis_client()
    try:
        _traffic_flowing(deployment)
        before = _before_h0_goes(deployment, client)
        pending, owners = _disturb_while_handlers_run(deployment, client, lambda: deployment.kill_host("h0"))
        wait_until_sync(lambda: all_clusters_ready(deployment, client, host="h1"), timeout=40, interval=0.2,
                        message="h0's clusters READY on h1")
        _ends_with_nothing_lost(deployment, before)
        outcome = _taken_over(deployment, client, pending, owners)
        print(f"{len(pending)} claims pending at the kill: {outcome}")
        assert outcome["still_pending"] == 0 and outcome["taken_over"] > 0, outcome
    finally:
        client.close()


def test_host_frozen_while_handlers_run_loses_nothing(deploy: Callable[..., SecuredRehearsal]) -> None:
    """SIGSTOP with handlers running, past the lease; SIGCONT once the new owner is READY: the woken handlers'
    replies and the new owner's are one message each (their nonces), and nothing is lost."""
    deployment = deploy(**SHAPE, **SLOW, sim_heartbeat_interval=10.0).start()
    client = deployment.redis_client()
    try:
        _traffic_flowing(deployment)
        frozen = deployment.cluster_pids("h0")
        before = _before_h0_goes(deployment, client)
        pending, owners = _disturb_while_handlers_run(deployment, client, lambda: deployment.freeze_host("h0"))
        wait_until_sync(lambda: all_clusters_ready(deployment, client, host="h1"), timeout=40, interval=0.1,
                        message="h0's clusters READY on h1")
        deployment.thaw_host("h0")
        wait_until_sync(lambda: not live_pids(frozen), timeout=30, message="woken cluster processes exit")
        _ends_with_nothing_lost(deployment, before)
        outcome = _taken_over(deployment, client, pending, owners)
        deduped = deployment.sim_stats()["nonce_deduped"]
        print(f"{len(pending)} claims pending at the freeze: {outcome}; replies deduped by nonce: {deduped}")
        assert outcome["still_pending"] == 0 and outcome["taken_over"] > 0, outcome
        assert deduped > 0, "the woken handlers' replies were the new owner's messages (same nonce)"
    finally:
        client.close()


def test_cluster_sigkill_while_handlers_run_restarted_in_place_loses_nothing(
        deploy: Callable[..., SecuredRehearsal]) -> None:
    """One cluster process SIGKILLed with handlers running: its supervisor reaps it and restarts it in place (same
    epoch); the new run was told the old run is dead (``LETSFRAG_DEAD_RUNS``) and takes its pending claims over in
    its replay."""
    deployment = deploy(**SHAPE, **SLOW).start()
    client = deployment.redis_client()
    try:
        _traffic_flowing(deployment)
        assigned = deployment.assignment(client)
        victim = min(cid for cid, (host, _) in assigned.items() if host == "h0")
        owner = (victim, assigned[victim][1])
        pid = cluster_pids_by_id(deployment)[victim]
        before = _before(deployment, deployment.settings.shards_per_cluster)
        pending = wait_until_sync(lambda: {key: v for key, v in _claims(deployment, client).items()
                                           if v is not None and v.state == PENDING and (v.cluster, v.epoch) == owner},
                                  timeout=10, interval=0.05, message="handlers running in the victim")
        os.kill(pid, signal.SIGKILL)
        wait_until_sync(lambda: not live_pids([pid]), timeout=10, interval=0.05, message="the victim is gone")
        wait_until_sync(lambda: all_clusters_ready(deployment, client), timeout=40, interval=0.2,
                        message="the killed cluster READY again")
        assert deployment.assignment(client) == assigned, "restarted in place: same host, same epoch"
        _ends_with_nothing_lost(deployment, before)
        claims = _claims(deployment, client)
        outcome = {"taken_over": 0, "done_by_old": 0, "still_pending": 0}
        for key, old in pending.items():
            value = claims.get(key)
            if value is None or value.state != DONE:
                outcome["still_pending"] += 1
            else:
                outcome["done_by_old" if value.run == old.run else "taken_over"] += 1
        print(f"{len(pending)} claims pending at the kill: {outcome}")
        assert all(v.run for v in pending.values()), "the claims name their run"
        assert outcome["still_pending"] == 0 and outcome["taken_over"] > 0, outcome
    finally:
        client.close()
