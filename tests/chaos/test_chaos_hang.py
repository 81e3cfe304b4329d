"""Fault 7: a cluster's event loop blocks after READY: hang detected, stacks dumped, restarted, READY again."""

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
    status_of,
    wait_on_ready,
    wait_ready,
)
from support.waiting import wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal

pytestmark = pytest.mark.chaos

VICTIM = 2
HANG_TIMEOUT = 3.0


def test_blocked_event_loop_is_dumped_and_restarted(rehearsal: Callable[..., Rehearsal], tmp_path: Path) -> None:
    flag = tmp_path / "hang.flag"
    deployment = rehearsal(**SMALL, bot_command=FAULTY_BOT, hang_timeout=HANG_TIMEOUT, stop_timeout=2.0,
                           bot_env={"CHAOS_FAULT": "hang", "CHAOS_CLUSTER": str(VICTIM), "CHAOS_FLAG": str(flag)})
    deployment.start()
    wait_ready(deployment)
    before = cluster_pids_by_id(deployment)
    host = status_of(deployment, VICTIM)["host"]
    # on a busy machine discord.py's on_ready can come seconds after the READY the supervisor reports: arm the
    # fault only once the running process is past it, so that the restarted process is the one that hangs
    wait_on_ready(flag, before[VICTIM])

    flag.touch()
    armed_at = time.time()
    restart = deployment.letsfrag_cli("restart", "--cluster", str(VICTIM), "--secret-env", "REHEARSAL_SECRET")
    assert restart.returncode == 0, restart.stderr
    wait_until_sync(lambda: not flag.exists(), timeout=30, interval=0.1, message="the bot blocks its event loop")
    hung_pid = cluster_pids_by_id(deployment)[VICTIM]
    assert hung_pid != before[VICTIM], "the restarted process took the fault"
    blocked_at = time.monotonic()

    def restarted() -> bool:
        pid = cluster_pids_by_id(deployment).get(VICTIM)
        return pid not in (None, hung_pid) and status_of(deployment, VICTIM).get("state") == "ready"

    wait_until_sync(restarted, timeout=60, interval=0.2, message="the hung cluster is replaced and READY")
    # detection needs hang_timeout without heartbeat, then the stack dump, the stop and the new start
    assert time.monotonic() - blocked_at > HANG_TIMEOUT - 1.0

    log_text = (deployment.workdir / "logs" / host / f"cluster-{VICTIM}.log").read_text(errors="replace")
    dump = log_text[log_text.index("SIGUSR1"):] if "SIGUSR1" in log_text else log_text
    assert "Thread 0x" in dump or "Current thread 0x" in dump, "faulthandler's stack dump is in the log"
    assert 'programs/faulty_bot.py", line' in dump and " in on_ready" in dump, "the dump shows the blocking frame"

    client = deployment.redis_client()
    history = [json.loads(x) for x in client.lrange(f"rehearsal:restarts:cluster:{VICTIM}", 0, -1)]
    client.close()
    assert any("hung" in str(h.get("reason", "")) for h in history), history
    after = cluster_pids_by_id(deployment)
    assert {c: p for c, p in after.items() if c != VICTIM} == {c: p for c, p in before.items() if c != VICTIM}
    assert_clean_end(deployment, ["cluster_hung", "cluster_restart"], since=armed_at)
