"""Helpers for the supervisor tests: a host config around the stub program, and broker stand-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import psutil
import redis.asyncio as aioredis
import yaml

from letsfrag.config import HostConfig
from letsfrag.contract.envelope import Codec, Envelope, MessageType
from letsfrag.contract.keys import Keys

STUB = Path(__file__).parent.parent / "supervisor" / "programs" / "stub.py"
NS = "t"
HOST = "h1"
TOKEN = "stub-token-0123456789"
KEYS = Keys(NS)


def stub_program(launcher: str) -> dict[str, Any]:
    """The ``bot`` keys running the stub: forked as module ``stub`` (``fork``) or exec'd as a script (``exec``)."""
    if launcher == "fork":
        return {"module": "stub", "cwd": str(STUB.parent)}
    return {"command": [sys.executable, str(STUB)]}


def host_config(redis_url: str, tmp_path: Path, *, launcher: str = "fork", **overrides: Any) -> HostConfig:
    """A host config running the stub with short timers; ``overrides`` replace top-level sections.

    ``launcher``: how the stub is started (``fork``, the default for ``bot.module``, or ``exec``); a ``bot``
    override naming ``command`` or ``module`` replaces the stub.
    """
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir(exist_ok=True)
    bot = overrides.get("bot") or {}
    program = {} if "command" in bot or "module" in bot else stub_program(launcher)
    data: dict[str, Any] = {
        "redis": redis_url,
        "namespace": NS,
        "host": {"id": HOST, "capacity": 4},
        "bot": {**program, "token": TOKEN,
                "env": {"STUB_DIR": str(stub_dir), "STUB_MODE_FILE": str(stub_dir / "modes.json")}},
        "restart": {"backoff": {"initial": 0.2, "factor": 2.0, "max": 1.0, "jitter": 0.0}, "max_restarts": 3,
                    "window": 60},
        "limits": {"hang_timeout": 3.0, "stop_timeout": 1.0},
        "logs": {"dir": str(tmp_path / "logs"), "max_bytes": 1024 * 1024, "backups": 2},
        "sample_interval": 0.2,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return HostConfig.model_validate(data)


def set_modes(tmp_path: Path, **modes: str) -> None:
    """``set_modes(tmp_path, default="well", **{"1": "crash"})``."""
    (tmp_path / "stub").mkdir(exist_ok=True)
    (tmp_path / "stub" / "modes.json").write_text(json.dumps(modes))


def starts(tmp_path: Path, cluster_id: int) -> list[dict[str, Any]]:
    path = tmp_path / "stub" / f"starts-{cluster_id}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def write_layout(r: aioredis.Redis, *, shards: int = 4, per_cluster: int = 1, heartbeat: float = 0.3,
                       ttl: float = 2.0) -> None:
    await r.hset(KEYS.layout, mapping={  # type: ignore[misc]
        "shard_count": shards, "shards_per_cluster": per_cluster, "cluster_count": -(-shards // per_cluster),
        "max_concurrency": 1, "identify_window": 5, "lease_ttl": ttl, "lease_grace": 1,
        "heartbeat_interval": heartbeat, "updated_at": 0})


async def doorbell(r: aioredis.Redis, host: str = HOST, secret: str | None = None) -> None:
    envelope = Envelope(type=MessageType.ASSIGN, sender="broker:test", channel=KEYS.host_inbox(host))
    await r.publish(KEYS.host_inbox(host), Codec(secret).encode(envelope))


async def grant(r: aioredis.Redis, cluster_id: int, epoch: int, host: str = HOST) -> None:
    await r.hset(KEYS.assignment, str(cluster_id), json.dumps({"host": host, "epoch": epoch}))  # type: ignore[misc]
    await doorbell(r, host)


async def revoke(r: aioredis.Redis, cluster_id: int, host: str = HOST) -> None:
    await r.hdel(KEYS.assignment, str(cluster_id))  # type: ignore[misc]
    await doorbell(r, host)


async def status(r: aioredis.Redis, cluster_id: int) -> dict[str, str]:
    return cast("dict[str, str]", await r.hgetall(KEYS.cluster_status(cluster_id)))  # type: ignore[misc]


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def write_supervise_config(redis_url: str, tmp_path: Path, stop_timeout: str = "1s", **limits: str) -> Path:
    """A ``letsfrag supervise`` config file running the stub (``limits`` added to ``limits``)."""
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir(exist_ok=True)
    data = {
        "redis": redis_url, "namespace": "t", "host": {"id": "placeholder", "capacity": 2},
        "bot": {"command": [sys.executable, str(STUB)], "token": "${STUB_TOKEN}",
                "env": {"STUB_DIR": str(stub_dir), "STUB_MODE_FILE": str(stub_dir / "modes.json")}},
        "limits": {"stop_timeout": stop_timeout, **limits}, "logs": {"dir": str(tmp_path / "logs")},
        "sample_interval": "200ms",
    }
    path = tmp_path / "host.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_supervisor(config: Path) -> subprocess.Popen[bytes]:
    """``letsfrag supervise config --host-id h1`` as its own process (output on its stdout pipe)."""
    code = "import sys; from letsfrag.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "--log-format", "plain", "supervise", str(config),
                             "--host-id", HOST], env={**os.environ, "STUB_TOKEN": TOKEN},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
