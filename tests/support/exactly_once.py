"""Support for the chaos tests of part B: handling counters, cluster states, a deployment with Redis ACL.

The handling referee of the simulator counts every ``!ping <n>`` it sent and every answer the bot posted;
these helpers read it, drive ``/_sim/traffic`` and read the cluster states from Redis (docs/redis.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

from letsfrag.contract.keys import Keys
from letsfrag.lab.rehearsal import Rehearsal, RehearsalSettings
from letsfrag.redis_server import RedisServer, find_redis_server
from support.waiting import scaled, wait_until_sync

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ deployments


@dataclass
class SecuredRehearsal(Rehearsal):
    """A rehearsal whose Redis may require an ACL user/password and whose bus window may be short.

    The configs then say ``redis: {url, username, password: ${REDIS_PASSWORD}}``; the password reaches the
    processes only through their environment.
    """

    redis_username: str | None = None
    redis_password: str | None = None
    signature_window: float | None = None
    #: YAML appended to the broker's config (e.g. a handover deadline)
    broker_extra: str = ""

    def start_redis(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        extra: list[str] = []
        if self.redis_username and self.redis_password:
            # the default user is switched off: only the named ACL user may connect
            extra = [
                "--user",
                "default",
                "off",
                "--user",
                self.redis_username,
                "on",
                f">{self.redis_password}",
                "~*",
                "&*",
                "+@all",
            ]
        probe = (self.redis_username, self.redis_password) if self.redis_username and self.redis_password else None
        self.redis = RedisServer(
            data_dir=self.workdir / "redis", persist=self.settings.redis_persist, extra_args=extra, probe_user=probe
        )
        self.redis.start()

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.redis_password:
            env["REDIS_PASSWORD"] = self.redis_password
        return env

    def _common_yaml(self) -> str:
        text = super()._common_yaml()
        if self.redis_username:
            text = text.replace(
                f"redis: {self.redis_url}\n",
                f"redis:\n  url: {self.redis_url}\n  username: {self.redis_username}\n"
                "  password: ${REDIS_PASSWORD}\n",
            )
        if self.signature_window is not None:
            text += f"signature_window: {self.signature_window}s\n"
        return text

    def broker_yaml(self) -> str:
        return super().broker_yaml() + self.broker_extra

    def redis_client(self) -> redis.Redis:
        """A sync client (str responses) that may connect whatever the ACL."""
        return redis.Redis.from_url(
            self.redis_url, decode_responses=True, username=self.redis_username, password=self.redis_password
        )

    def assignment(self, client: Any = None) -> dict[int, tuple[str, int]]:
        if client is None and self.redis_password:
            client = self.redis_client()
            try:
                return super().assignment(client)
            finally:
                client.close()
        return super().assignment(client)


def deployment_factory(tmp_path: Path) -> Iterator[Callable[..., SecuredRehearsal]]:
    """Factory fixture body: ``make(redis_username=.., signature_window=.., broker_extra=.., **settings)``, torn
    down after."""
    made: list[SecuredRehearsal] = []

    def make(
        *,
        redis_username: str | None = None,
        redis_password: str | None = None,
        signature_window: float | None = None,
        broker_extra: str = "",
        **settings: Any,
    ) -> SecuredRehearsal:
        deployment = SecuredRehearsal(
            RehearsalSettings(**settings),
            tmp_path / f"deployment-{len(made)}",
            redis_username=redis_username,
            redis_password=redis_password,
            signature_window=signature_window,
            broker_extra=broker_extra,
        )
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        leftovers = deployment.close(timeout=scaled(15.0))
        assert leftovers == [], f"processes needed SIGKILL after the graceful stop: {leftovers}"


# ------------------------------------------------------------------------------------------ readings


def handling(deployment: Rehearsal) -> dict[str, int]:
    """The simulator's handling counters (sent, answered_once, answered_twice_or_more, ...)."""
    return {k: int(v) for k, v in deployment.sim_stats()["handling"].items()}


def start_traffic(deployment: Rehearsal, rate: float, seconds: float | None = None, joins: float = 0.0) -> None:
    """``rate`` events a second at the simulator: ``!ping`` messages, member joins for a ``joins`` share."""
    query = f"rate={rate}&joins={joins}" + (f"&seconds={seconds}" if seconds is not None else "")
    deployment.sim_post(f"/_sim/traffic?{query}")


def stop_traffic(deployment: Rehearsal) -> None:
    deployment.sim_post("/_sim/traffic/stop")


def reset_referee(deployment: Rehearsal) -> None:
    deployment.sim_post("/_sim/reset")


def settle(deployment: Rehearsal, timeout: float = 20.0) -> dict[str, int]:
    """Wait until no message is pending (each one answered, or older than the answer timeout)."""
    return dict(
        wait_until_sync(
            lambda: (h := handling(deployment))["pending"] == 0 and h,
            timeout=timeout,
            interval=0.2,
            message="no pending message at the simulator",
        )
    )


def traffic_on(deployment: Rehearsal, rate: float, *, joins: float = 0.0, answered: int = 10,
               timeout: float = 15.0) -> None:
    """A fresh referee, then ``rate`` events a second (a ``joins`` share of member joins) until
    :func:`traffic_off`; returns once ``answered`` of them were answered (the bot is serving)."""
    reset_referee(deployment)
    start_traffic(deployment, rate, joins=joins)
    wait_until_sync(lambda: handling(deployment)["answered_once"] >= answered, timeout=timeout,
                    message="traffic answered")


def traffic_off(deployment: Rehearsal, *, more: float = 0, message: str = "traffic after") -> dict[str, int]:
    """After ``more`` events more than were sent so far (0: at once), stop the traffic and :func:`settle`: the
    handling counters once every event is answered or late."""
    if more:
        sent = handling(deployment)["sent"]
        wait_until_sync(lambda: handling(deployment)["sent"] >= sent + more, timeout=10, message=message)
    stop_traffic(deployment)
    return settle(deployment)


def cluster_states(deployment: Rehearsal, client: redis.Redis) -> dict[int, tuple[str, str, int]]:
    """cluster id -> (host, state, pid) from ``{ns}:status:cluster:{cid}``."""
    keys = Keys(deployment.settings.namespace)
    states = {}
    for cid in range(deployment.settings.clusters):
        raw = client.hgetall(keys.cluster_status(cid))
        if raw:
            states[cid] = (str(raw.get("host", "")), str(raw.get("state", "")), int(raw.get("pid") or 0))
    return states


def all_clusters_ready(deployment: Rehearsal, client: redis.Redis, host: str | None = None) -> bool:
    """Every cluster READY (on ``host`` when given) and placed where the assignment says."""
    states = cluster_states(deployment, client)
    grants = deployment.assignment(client)
    if len(states) != deployment.settings.clusters or len(grants) != deployment.settings.clusters:
        return False
    return all(
        state == "ready" and grants[cid][0] == owner and (host is None or owner == host)
        for cid, (owner, state, _) in states.items()
    )


def live_pids(pids: list[int]) -> list[int]:
    """The pids of ``pids`` that still run (zombies count as gone)."""
    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    return alive


# ------------------------------------------------------------------------------------------ CLI


def _cli_argv(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "letsfrag", "--log-format", "plain", *args]


def _cli_env(env: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(env or {})}


def letsfrag_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m letsfrag ARGS`` to completion (text output; ``env`` added to this process's)."""
    return subprocess.run(
        _cli_argv(args),
        env=_cli_env(env),
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        stdin=subprocess.DEVNULL,
    )


def letsfrag_cli_popen(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[str]:
    r""":func:`letsfrag_cli` in the background: the running command, its stdout and stderr text pipes (the caller
    ``communicate()``\ s with it, and kills it if it is still running when the test ends)."""
    return subprocess.Popen(
        _cli_argv(args),
        env=_cli_env(env),
        cwd=cwd or REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def redis_cli() -> str | None:
    """The ``redis-cli`` binary next to redis-server, or on PATH (None: use redis-py)."""
    with contextlib.suppress(Exception):
        beside = Path(find_redis_server()).with_name("redis-cli")
        if beside.exists():
            return str(beside)
    return shutil.which("redis-cli")


def publish_raw(deployment: Rehearsal, channel: str, payload: str | bytes) -> None:
    """PUBLISH without the secret: with ``redis-cli`` if present (an outsider's tool), else redis-py."""
    binary = redis_cli()
    port = deployment.redis.port if deployment.redis is not None else 6379
    if binary is not None and isinstance(payload, str) and "\x00" not in payload:
        done = subprocess.run(
            [binary, "-h", "127.0.0.1", "-p", str(port), "PUBLISH", channel, payload],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert done.returncode == 0, done.stderr
        return
    client = redis.Redis.from_url(deployment.redis_url)
    try:
        client.publish(channel, payload)
    finally:
        client.close()


def forged(
    kind: str,
    sender: str,
    payload: dict[str, Any],
    *,
    target: str | None = None,
    reply_to: str | None = None,
    ts: float | None = None,
    channel: str | None = None,
) -> str:
    """An envelope as an outsider would write it: the current frame format (``lf2.<sig>.<body>``), right
    shape, no signature."""
    return "lf2.." + json.dumps(
        {
            "v": 2,
            "sender": sender,
            "type": kind,
            "id": os.urandom(8).hex(),
            "corr": None,
            "reply_to": reply_to,
            "target": target,
            "channel": channel,
            "ts": time.time() if ts is None else ts,
            "payload": payload,
        }
    )
