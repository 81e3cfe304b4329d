"""Fault 6: one cluster crash-loops: backoff, FAILED after the intensity limit, the rest untouched."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.chaos import (
    FAULTY_BOT,
    SMALL,
    assert_clean_end,
    cluster_pids_by_id,
    identifies,
    status_of,
    wait_on_ready,
    wait_ready,
)
from support.waiting import wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal

pytestmark = pytest.mark.chaos

VICTIM = 1
MAX_RESTARTS = 3


def test_crash_loop_ends_failed_and_spares_the_rest(rehearsal: Callable[..., Rehearsal], tmp_path: Path) -> None:
    flag = tmp_path / "crash.flag"
    deployment = rehearsal(**SMALL, bot_command=FAULTY_BOT, max_restarts=MAX_RESTARTS, restart_window=60.0,
                           bot_env={"CHAOS_FAULT": "crash", "CHAOS_CLUSTER": str(VICTIM), "CHAOS_FLAG": str(flag)})
    deployment.start()
    wait_ready(deployment)
    others = {cid: pid for cid, pid in cluster_pids_by_id(deployment).items() if cid != VICTIM}
    assert len(others) == deployment.settings.clusters - 1
    spent = identifies(deployment)
    victim_shards = len(json.loads(status_of(deployment, VICTIM)["shard_ids"]))
    # else the running process, reaching on_ready late on a busy machine, crashes too: one start more
    wait_on_ready(flag, cluster_pids_by_id(deployment)[VICTIM])

    flag.touch()
    armed_at = time.time()
    restart = deployment.letsfrag_cli("restart", "--cluster", str(VICTIM), "--secret-env", "REHEARSAL_SECRET",
                                      "--timeout", "10s")
    assert restart.returncode in (0, 1), restart.stderr  # the restart reaches READY, then the bot exits 1
    wait_until_sync(lambda: status_of(deployment, VICTIM).get("state") == "failed", timeout=60, interval=0.2,
                    message=f"cluster {VICTIM} FAILED after {MAX_RESTARTS} restarts")

    status = deployment.letsfrag_cli("status", "--json")
    assert status.returncode == 1, (status.returncode, status.stderr)
    document = json.loads(status.stdout)
    rows = {row["id"]: row for row in document["clusters"]}
    assert rows[VICTIM]["state"] == "failed"
    assert rows[VICTIM]["restarts"] >= MAX_RESTARTS
    assert all(rows[cid]["state"] == "ready" for cid in others)
    assert {cid: pid for cid, pid in cluster_pids_by_id(deployment).items() if cid != VICTIM} == others, \
        "the other clusters were not restarted"
    # the crash loop's IDENTIFY cost is bounded: one per shard per start (first + max_restarts restarts)
    burned = identifies(deployment) - spent
    assert burned <= victim_shards * (MAX_RESTARTS + 1), burned
    client = deployment.redis_client()
    history = [json.loads(x) for x in client.lrange(f"rehearsal:restarts:cluster:{VICTIM}", 0, -1)]
    client.close()
    delays = [h["delay"] for h in reversed(history) if h.get("exit_code") == 1]
    assert len(delays) >= MAX_RESTARTS - 1 and delays == sorted(delays), f"backoff grows: {delays}"

    # the operator fixes the bot and clears FAILED with a restart
    flag.unlink()
    restart = deployment.letsfrag_cli("restart", "--cluster", str(VICTIM), "--secret-env", "REHEARSAL_SECRET")
    assert restart.returncode == 0, restart.stderr
    wait_ready(deployment, message="the repaired cluster is READY again")
    assert_clean_end(deployment, ["cluster_crash", "cluster_restart", "cluster_failed"], since=armed_at)
