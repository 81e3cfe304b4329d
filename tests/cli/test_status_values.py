"""``letsfrag status`` with bad values in Redis: NaN/inf in a host record, a skewed clock, a poisoned layout."""

from __future__ import annotations

import json
import time

import pytest
from support.seed import seed

from letsfrag.cli.main import build_parser
from letsfrag.cli.operator import run_restart
from letsfrag.cli.status import run
from letsfrag.connection import create_redis
from letsfrag.contract.keys import Keys


async def _status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await run(build_parser().parse_args(["status", *argv]))
    out, err = capsys.readouterr()
    return code, out, err


async def test_nan_and_inf_in_a_host_record_are_shown_as_invalid(redis_url: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    redis = create_redis(redis_url)
    keys = Keys()
    try:
        await seed(redis, now=time.time(), healthy=True)
        await redis.hset(keys.host("host-01"), mapping={"cpu_percent": "nan", "rss": "inf", "capacity": "inf",
                                                        "pid": "-inf", "heartbeat_at": "nan", "started_at": "1e999",
                                                        "clock_offset": "-120.5"})
        await redis.hset(keys.host("host-02"), mapping={"running": '{"1": Infinity}', "clock_offset": "nan"})
        await redis.hset(keys.layout, "lease_ttl", "inf")
    finally:
        await redis.aclose()

    code, out, err = await _status(capsys, "--json", "--redis", redis_url)
    assert err == "" and code == 0, err
    doc = json.loads(out, parse_constant=_refuse)  # strict JSON: no NaN/Infinity anywhere
    hosts = {h["id"]: h for h in doc["hosts"]}
    bad = hosts["host-01"]
    assert bad["invalid"] == ["heartbeat_at", "capacity", "cpu_percent", "rss", "started_at", "pid"]
    assert bad["cpu_percent"] is None and bad["rss"] is None and bad["capacity"] is None and bad["pid"] is None
    assert bad["clock_offset"] == -120.5 and hosts["host-02"]["invalid"] == ["clock_offset", "running"]
    assert hosts["host-02"]["running"] == {}
    assert hosts["host-03"]["invalid"] == [] and hosts["host-03"]["clock_offset"] is None
    warnings = doc["warnings"]
    assert any("host host-01: clock is 120.5s behind Redis TIME" in w for w in warnings)
    assert any("letsfrag:host:host-01 has invalid heartbeat_at, capacity" in w for w in warnings)
    assert any("letsfrag:layout field 'lease_ttl' must be a finite number" in w for w in warnings)
    assert doc["layout"]["lease_ttl"] == 10.0, "the display falls back to the default, never inf"

    code, out, err = await _status(capsys, "--redis", redis_url)
    assert err == "" and code == 0
    assert "warning: host host-01: clock is 120.5s behind Redis TIME" in out
    assert "host-01" in out and "host-03" in out


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} in the status document")


async def test_a_skewed_host_is_not_shown_stale_and_its_silence_is_explained(
        redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    redis = create_redis(redis_url)
    keys = Keys()
    now = time.time()
    try:
        info = await seed(redis, now=now, healthy=True)
        # host-03's clock is 120 s behind: everything it (and its clusters) writes is stamped 120 s early
        await redis.hset(keys.host("host-03"), mapping={"clock_offset": "-120.0", "heartbeat_at": f"{now - 121:.3f}"})
        mine = [cid for cid, host in info.assignment.items() if host == "host-03"]
        for cid in mine:
            await redis.hset(keys.cluster_status(cid), "last_heartbeat", f"{now - 121:.3f}")
        code, out, _ = await _status(capsys, "--json", "--redis", redis_url)
        doc = json.loads(out)
        states = {c["id"]: c["state"] for c in doc["clusters"]}
        assert code == 0 and all(states[cid] == "ready" for cid in mine), "ages are read on the host's own clock"
        host = {h["id"]: h for h in doc["hosts"]}["host-03"]
        assert host["lease_age"] == pytest.approx(1.0, abs=0.5)
        assert any("host host-03: clock is 120.0s behind Redis TIME" in w for w in doc["warnings"])

        # a command to it times out: the reply says why it may be silent
        silent = redis.pubsub()
        await silent.subscribe(keys.host_inbox("host-03"))  # listening, never answering
        try:
            args = build_parser().parse_args(["restart", "--host", "host-03", "--redis", redis_url, "--timeout", "1s"])
            assert await run_restart(args) == 1
        finally:
            await silent.aclose()
        err = capsys.readouterr().err
        assert "host host-03: clock is 120.0s behind Redis TIME" in err and "check NTP" in err
    finally:
        await redis.aclose()
