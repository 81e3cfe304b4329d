"""``--log-format json``: the broker, the supervisor and its discord.py cluster processes all write JSON lines,
each carrying the fields that say where it comes from (broker; host; host, cluster, shards and epoch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.waiting import wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal, RehearsalSettings

pytestmark = pytest.mark.integration


def _records(path: Path) -> list[dict[str, Any]]:
    """Every line of a log file parsed as JSON (the supervisor's own ``--- letsfrag`` notes left out)."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("--- letsfrag")]
    return [json.loads(line) for line in lines]


def test_every_process_logs_json_lines_with_its_context(tmp_path: Path) -> None:
    deployment = Rehearsal(RehearsalSettings(hosts=1, shards=4, shards_per_cluster=2, log_format="json"),
                           tmp_path / "d").start()
    try:
        wait_until_sync(deployment.all_ready, timeout=60, interval=0.25, message="4 shards READY")
        broker = _records(deployment.workdir / "broker-b0.log")
        host = _records(deployment.workdir / "host-h0.log")
        assert broker and all(r["broker"] == "b0" for r in broker if r["logger"].startswith("letsfrag.broker"))
        assert any(r.get("broker") == "b0" for r in broker)
        assert host and all(r.get("host") == "h0" for r in host if r["logger"].startswith("letsfrag.supervisor"))
        logs = deployment.workdir / "logs" / "h0"
        wait_until_sync(lambda: all(_records(logs / f"cluster-{c}.log") for c in (0, 1)), timeout=20,
                        message="both clusters logged")
        for cid, shards in ((0, "0–1"), (1, "2–3")):
            records = _records(logs / f"cluster-{cid}.log")
            assert {r["cluster"] for r in records} == {str(cid)}, records
            assert {(r["host"], r["shards"]) for r in records} == {("h0", shards)}
            assert all(int(r["epoch"]) >= 1 and r["level"] and "message" in r for r in records)
            assert any(r["logger"].startswith("discord") for r in records), "discord.py's own lines are JSON too"
    finally:
        assert deployment.close() == []
