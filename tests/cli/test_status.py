"""``letsfrag status`` (tables and --json) and the snapshot reader against a seeded deployment."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from support.seed import HOSTILE, HOSTILE_SHOWN, NOW, seed, seed_handover, seed_hostile

from letsfrag.cli.main import build_parser
from letsfrag.cli.status import run
from letsfrag.connection import create_redis
from letsfrag.contract.keys import Keys
from letsfrag.redis_server import free_port
from letsfrag.snapshot.picture import SCHEMA_VERSION, read_snapshot


async def _seed(url: str, **kwargs: Any) -> None:
    redis = create_redis(url)
    try:
        await seed(redis, now=time.time(), **kwargs)
    finally:
        await redis.aclose()


async def _status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await run(build_parser().parse_args(["status", *argv]))
    out, err = capsys.readouterr()
    return code, out, err


async def test_json_schema_and_degraded_exit_code(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    await _seed(redis_url)
    code, out, _ = await _status(capsys, "--json", "--redis", redis_url)
    assert code == 1
    doc = json.loads(out)
    assert set(doc) == {"schema", "namespace", "taken_at", "summary", "layout", "leader", "hosts", "clusters",
                        "events", "warnings"}
    assert doc["schema"] == SCHEMA_VERSION and doc["namespace"] == "letsfrag"
    assert doc["summary"] == {
        "healthy": False, "hosts_up": 3, "hosts_total": 3, "clusters_ready": 10, "clusters_total": 12,
        "clusters_unassigned": 1, "shards_ready": 40, "shards_total": 48, "identify_depth": 2,
        "errors_10m": 2, "identify_budget": None, "generation": 1,
    }
    assert doc["layout"]["shards_per_cluster"] == 4 and doc["leader"]["id"] == "broker-a"
    assert (doc["layout"]["generation"], doc["layout"]["shard_count"]) == (1, 48)
    clusters = {c["id"]: c for c in doc["clusters"]}
    assert clusters[3]["shard_range"] == "12–15" and clusters[3]["host"] == "host-01"
    assert clusters[4]["state"] == "failed" and clusters[4]["shards_ready"] == 0
    assert clusters[11] | {"assigned": False, "host": None, "state": "unassigned"} == clusters[11]
    host = doc["hosts"][0]
    assert host["id"] == "host-01" and host["state"] == "up" and host["clusters"] == [0, 3, 6, 9]
    assert doc["events"][0]["kind"] == "cluster_unassigned"


async def test_healthy_deployment_exits_0_and_prints_tables(redis_url: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    await _seed(redis_url, healthy=True)
    code, out, _ = await _status(capsys, "--redis", redis_url)
    assert code == 0
    assert "all shards ready" in out and "generation 1" in out and "12–15" in out and "host-03" in out


async def test_hostile_strings_in_redis_are_shown_literally(redis_url: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    redis = create_redis(redis_url)
    try:
        await seed(redis, now=time.time())
        await seed_hostile(redis, now=time.time())
    finally:
        await redis.aclose()
    code, out, err = await _status(capsys, "--redis", redis_url)
    assert code == 1, err
    flat = out.replace("\n", "")  # a long error cell may wrap
    assert HOSTILE_SHOWN in flat, out  # the hosts table: id and hostname
    assert "\x1b" not in out and "\x07" not in out  # no escape reaches the terminal
    assert not any(line.startswith("forged") for line in out.splitlines())
    code, out, err = await _status(capsys, "--json", "--redis", redis_url)
    assert code == 1, err
    assert HOSTILE in [h["id"] for h in json.loads(out)["hosts"]]
    assert not any(c in out for c in "\x1b\x07\x9b\u202e")  # every control character escaped in the JSON


async def test_lost_host_and_namespace(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    redis = create_redis(redis_url)
    await seed(redis, namespace="prod", lost=("host-02",), draining=("host-03",), now=NOW)
    snapshot = await read_snapshot(redis, Keys("prod"), now=NOW)
    await redis.aclose()
    states = {h.id: h.state for h in snapshot.hosts}
    assert states == {"host-01": "up", "host-02": "lost", "host-03": "draining"}
    assert snapshot.hosts[0].lease_age == pytest.approx(1.0)
    code, out, _ = await _status(capsys, "--json", "--redis", redis_url)
    assert code == 1 and json.loads(out)["layout"] is None  # the default namespace is empty


async def test_unreachable_redis_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, out, err = await _status(capsys, "--json", "--redis", url)
    assert code == 2 and out == "" and "cannot reach Redis" in err


async def test_bad_redis_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await _status(capsys, "--redis", "localhost:6379")
    assert code == 2 and "--redis" in err


async def test_shard_rows_and_a_malformed_shard_report(redis_url: str) -> None:
    redis = create_redis(redis_url)
    await seed(redis, now=NOW)
    keys = Keys()
    await redis.hset(keys.shard_status(2), "9", "{not json")
    full = await read_snapshot(redis, keys, now=NOW, shards=True)
    summary = await read_snapshot(redis, keys, now=NOW)
    await redis.aclose()
    by_id = {c.id: c for c in full.clusters}
    assert [s.id for s in by_id[0].shards] == [0, 1, 2, 3] and by_id[0].shards[0].status == "ready"
    assert [s.id for s in by_id[2].shards] == [8, 10, 11]  # the unreadable report is skipped, not fatal
    assert by_id[2].shards_ready == 3 == {c.id: c for c in summary.clusters}[2].shards_ready
    assert {s.status for s in by_id[4].shards} == {"down"}  # a FAILED cluster's stale reports are not believed
    assert summary.clusters[0].shards == [] and summary.shards_ready == full.shards_ready == 39


async def test_a_cluster_being_handed_over_and_a_rolling_restart(redis_url: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    redis = create_redis(redis_url)
    try:
        await seed(redis, now=time.time(), healthy=True)
        await seed_handover(redis, now=time.time())
    finally:
        await redis.aclose()
    code, out, err = await _status(capsys, "--redis", redis_url)
    assert code == 0, err
    words = " ".join(out.split())  # the header line may wrap
    assert "rolling restart of host-03: 2 of 4 (cluster 5)" in words and "handovers 2" in words
    rows = {cells[1].strip(): line for line in out.splitlines()
            if len(cells := line.split("│")) > 2 and cells[1].strip().isdigit()}
    assert "host-03 → host-01" in rows["5"] and "handing over" in rows["5"] and "10005 → 20005" in rows["5"]
    assert "rolling to host-01 epoch 20," in rows["5"]
    assert "switching" in rows["2"] and "– → 20002" in rows["2"] and "→ host" not in rows["2"]
    assert "handing over" not in rows["4"] and "switching" not in rows["4"]
    code, out, err = await _status(capsys, "--json", "--redis", redis_url)
    doc = json.loads(out)
    assert code == 0 and set(doc) == {"schema", "namespace", "taken_at", "summary", "layout", "leader", "hosts",
                                      "clusters", "events", "warnings"}
    assert doc["schema"] == SCHEMA_VERSION and doc["warnings"] == []
    clusters = {c["id"]: c for c in doc["clusters"]}
    moving = clusters[5]["handover"]
    assert {k: moving[k] for k in ("state", "phase", "reason", "from_host", "from_epoch", "host", "epoch",
                                   "old_pid", "new_pid", "successor")} == {
        "state": "handing over", "phase": "preparing", "reason": "rolling", "from_host": "host-03",
        "from_epoch": 6, "host": "host-01", "epoch": 20, "old_pid": 10005, "new_pid": 20005, "successor": "ready"}
    assert moving["deadline_in"] == pytest.approx(57, abs=5) and clusters[5]["state"] == "ready"
    assert clusters[2]["handover"]["state"] == "switching" and clusters[2]["handover"]["old_pid"] is None
    assert clusters[0]["handover"] is None
    assert doc["leader"]["operation"] == {"kind": "rolling", "host": "host-03", "done": 2, "total": 4, "cluster": 5}
    hosts = {h["id"]: h for h in doc["hosts"]}
    assert hosts["host-01"]["successors"] == [5] and hosts["host-02"]["successors"] == []


async def test_unreadable_handover_records_are_warnings_not_failures(redis_url: str) -> None:
    redis = create_redis(redis_url)
    keys = Keys()
    try:
        await seed(redis, now=NOW, healthy=True)
        await redis.hset(keys.handover, mapping={"3": "{not json", "x": "{}"})
        await redis.hset(keys.host("host-02"), "successors", "[1]")
        await redis.hset(keys.broker, "operation", "nonsense")
        snapshot = await read_snapshot(redis, keys, now=NOW)
    finally:
        await redis.aclose()
    assert all(c.handover is None for c in snapshot.clusters) and snapshot.leader.operation is None
    text = " | ".join(snapshot.warnings)
    assert "letsfrag:handover" in text and "successors" in text, text
