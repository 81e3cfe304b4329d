"""Checks every chaos test ends with: all shards READY once, a clean referee, and the story in the events."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from letsfrag.events import Event
from letsfrag.lab.rehearsal import Rehearsal
from support.waiting import wait_until_sync

#: the small deployment most chaos tests use: 2 hosts, 8 shards in 4 clusters of 2
SMALL: dict[str, Any] = {"hosts": 2, "shards": 8, "shards_per_cluster": 2, "max_concurrency": 4,
                         "identify_window": 1.0, "lease_ttl": 4.0, "lease_grace": 1.0, "heartbeat_interval": 1.0,
                         "startup_grace": 10.0}


#: the chaos test bot: examples/bot.py with one fault switched on by ``CHAOS_*`` variables
FAULTY_BOT = [sys.executable, str(Path(__file__).resolve().parents[1] / "chaos" / "programs" / "faulty_bot.py")]
#: the example bot answering ``SLOW_SECONDS`` after each event (handlers running when a host dies)
SLOW_BOT = [sys.executable, str(Path(__file__).resolve().parents[1] / "chaos" / "programs" / "slow_bot.py")]


def wait_ready(deployment: Rehearsal, timeout: float = 60.0, message: str = "every shard READY") -> None:
    wait_until_sync(deployment.all_ready, timeout=timeout, interval=0.25, message=message)


def referee(deployment: Rehearsal) -> dict[str, Any]:
    return deployment.sim_stats()


def identifies(deployment: Rehearsal) -> int:
    """IDENTIFYs the simulator has accepted so far (all shards)."""
    return int(deployment.sim_stats()["identifies"]["total"])


def kinds(events: Iterable[Event], since: float = 0.0) -> list[str]:
    return [e.kind for e in events if e.ts >= since]


def assert_clean_end(deployment: Rehearsal, expected_kinds: Iterable[str] = (), since: float = 0.0,
                     timeout: float = 60.0) -> list[Event]:
    """Every shard READY exactly once, 0 duplicate sessions, 0 identify violations, no handover overlap longer
    than its deadline, the expected events (waited for: a story's last event, e.g. ``handover_done`` after the
    old process stopped, may come a moment after every shard is READY)."""
    wait_ready(deployment, timeout=timeout, message="every shard READY exactly once at the end")
    expected = list(expected_kinds)

    def missing() -> list[str]:
        seen = kinds(deployment.events(), since)
        return [k for k in expected if k not in seen]

    if missing():
        try:
            wait_until_sync(lambda: not missing(), timeout=timeout, interval=0.25, message="the expected events")
        except AssertionError:
            pass  # the assertion below says which ones, with the story
    stats = deployment.sim_stats()
    assert stats["duplicate_sessions"]["count"] == 0, stats["duplicate_sessions"]
    assert stats["identify_violations"]["total"] == 0, stats["identify_violations"]
    assert stats["announced_overlaps"]["over_deadline"] == 0, stats["announced_overlaps"]
    events = deployment.events()
    absent = [k for k in expected if k not in kinds(events, since)]
    assert not absent, f"events {absent} missing from the story: {kinds(events, since)}"
    return events


def fault_window(seconds: float) -> None:
    """Keep a fault in place for ``seconds`` (the fault's duration, not a synchronisation wait)."""
    time.sleep(seconds)


def wait_on_ready(flag: Path, pid: int, timeout: float = 30.0) -> None:
    """Wait until the faulty bot's process ``pid`` has run ``on_ready`` (so arming ``flag`` now cannot fault it)."""
    wait_until_sync((flag.parent / f"on_ready-{pid}").exists, timeout=timeout, interval=0.1,
                    message=f"on_ready in process {pid}")


def status_of(deployment: Rehearsal, cluster_id: int) -> dict[str, str]:
    """The supervisor's ``{ns}:status:cluster:{cid}`` hash."""
    client = deployment.redis_client()
    try:
        return dict(client.hgetall(f"{deployment.settings.namespace}:status:cluster:{cluster_id}"))
    finally:
        client.close()


def cluster_pids_by_id(deployment: Rehearsal) -> dict[int, int]:
    """Cluster id -> pid of its process, from the status hashes (only clusters with a live pid)."""
    pids = {}
    for cid in range(deployment.settings.clusters):
        pid = status_of(deployment, cid).get("pid", "")
        if pid.isdigit() and int(pid) > 0:
            pids[cid] = int(pid)
    return pids

