"""A crash whose text quotes every secret: nothing in Redis, in the logs or in `letsfrag status` shows one."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from support.supervisor import HOST, KEYS, STUB, TOKEN, grant, set_modes, write_layout
from support.waiting import wait_until

from letsfrag.cluster.health import HealthReporter, ShardTracker
from letsfrag.logs import register_secret
from letsfrag.redis_server import RedisServer

PASSWORD = "redis-pw-7Hq2xVz"
SIGNING = "signing-secret-Qm41"
API_KEY = "api-key-value-9Zt"
SECRETS = (TOKEN, PASSWORD, SIGNING, API_KEY)


def _start(config: Path) -> subprocess.Popen[bytes]:
    code = "import sys; from letsfrag.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "--log-format", "plain", "supervise", str(config),
                             "--host-id", HOST], env={**os.environ, "STUB_TOKEN": TOKEN},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _config(url: str, tmp_path: Path) -> Path:
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir(exist_ok=True)
    data = {
        "redis": url, "namespace": KEYS.ns, "secret": SIGNING, "host": {"id": "placeholder", "capacity": 2},
        "bot": {"command": [sys.executable, str(STUB)], "token": "${STUB_TOKEN}",
                "env": {"STUB_DIR": str(stub_dir), "STUB_MODE_FILE": str(stub_dir / "modes.json"),
                        "STUB_API_KEY": API_KEY}},
        "restart": {"backoff": {"initial": "200ms", "max": "1s", "jitter": 0}, "max_restarts": 1},
        "limits": {"stop_timeout": "1s"}, "logs": {"dir": str(tmp_path / "logs")}, "sample_interval": "200ms",
    }
    path = tmp_path / "host.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def _everything(r: aioredis.Redis) -> str:
    """Every key and value of the deployment's namespace, as one text."""
    parts: list[str] = []
    async for key in r.scan_iter(match=f"{KEYS.ns}:*"):
        kind = await r.type(key)
        value: Any
        if kind == "hash":
            value = await r.hgetall(key)  # type: ignore[misc]
        elif kind == "list":
            value = await r.lrange(key, 0, -1)  # type: ignore[misc]
        elif kind == "stream":
            value = await r.xrange(key)
        elif kind == "set":
            value = sorted(await r.smembers(key))  # type: ignore[misc]
        elif kind == "zset":
            value = await r.zrange(key, 0, -1)
        else:
            value = await r.get(key)
        parts.append(f"{key} {value}")
    return "\n".join(parts)


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


@pytest.mark.integration
async def test_crash_quoting_every_secret_is_masked_everywhere(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path / "redis", password=PASSWORD)
    server.start()
    url = server.url.replace("redis://", f"redis://:{PASSWORD}@")
    r = aioredis.Redis.from_url(url, decode_responses=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        set_modes(tmp_path, default="leak")
        await write_layout(r)
        await grant(r, 0, epoch=1)
        proc = _start(_config(url, tmp_path))

        async def failed() -> bool:
            return await r.hget(KEYS.cluster_status(0), "state") == "failed"  # type: ignore[misc]

        await wait_until(failed, timeout=30, message="cluster 0 failed after its crashes")
        errors = [json.loads(e) for e in await r.lrange(KEYS.cluster_errors(0), 0, -1)]  # type: ignore[misc]
        assert errors and "RuntimeError: leak: token=*** password=*** secret=*** key=***" in errors[0]["text"]
        assert "leak: token=***" in await r.hget(KEYS.cluster_status(0), "last_error")  # type: ignore[misc]
        crashes = [e for _, e in await r.xrange(KEYS.events) if e["kind"] == "cluster_crash"]
        assert crashes and "token=***" in crashes[0]["message"]
        assert _leaks(await _everything(r)) == []

        log_text = (tmp_path / "logs" / "cluster-0.log").read_text()
        assert "Traceback (most recent call last)" in log_text and "token=*** password=***" in log_text
        assert f"redis://:***@127.0.0.1:{server.port}/0 with password ***" in log_text
        assert _leaks(log_text) == []

        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "letsfrag", "status", "--json", "--redis", url, "--namespace", KEYS.ns,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(status.communicate(), timeout=60)
        document = json.loads(out)
        assert "token=***" in document["clusters"][0]["last_error"]
        assert _leaks((out + err).decode()) == []
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=30)[0].decode()
            assert "token=***" in output and _leaks(output) == [], output[-3000:]
        await r.aclose()
        server.cleanup()


async def test_report_error_masks_the_traceback_before_redis(redis_url: str, r: aioredis.Redis) -> None:
    register_secret(TOKEN)
    reporter = HealthReporter(None, r, KEYS, 3, ShardTracker([0]), None)
    await reporter.report_error(f"Traceback ...\nValueError: bad token {TOKEN} for redis://u:{PASSWORD}@h:1/0")
    [entry] = [json.loads(e) for e in await r.lrange(KEYS.cluster_errors(3), 0, -1)]  # type: ignore[misc]
    assert entry["text"].endswith("ValueError: bad token *** for redis://u:***@h:1/0")
