"""The environment contract between a supervisor and the cluster process it spawns.

Secrets (bot token, Redis password, signing secret) travel in the environment, never on the command line.

=================================  =============================================================
``LETSFRAG_CLUSTER_ID``            cluster id (int)
``LETSFRAG_SHARD_IDS``             comma list of shard ids, e.g. ``8,9,10,11``
``LETSFRAG_SHARD_COUNT``           total shards of the bot
``LETSFRAG_HOST_ID``               host (supervisor) id
``LETSFRAG_HOST_INCARNATION``      the supervisor run's incarnation (its lease value)
``LETSFRAG_EPOCH``                 epoch of the grant this process runs under
``LETSFRAG_RUN``                   this process run's identity (letters, digits, dots; unique per supervisor run)
``LETSFRAG_DEAD_RUNS``             comma list of earlier runs of this cluster and epoch the supervisor reaped
``LETSFRAG_REDIS_URL``             Redis URL without credentials
``LETSFRAG_REDIS``                 JSON of the full Redis settings (username, password, TLS, Sentinel)
``LETSFRAG_NAMESPACE``             key and channel prefix
``LETSFRAG_SECRET``                signing secret (optional)
``LETSFRAG_TOKEN``                 the bot token
``LETSFRAG_DISCORD_API_URL``       REST base, e.g. ``http://127.0.0.1:8090/api/v10`` (optional)
``LETSFRAG_DISCORD_GATEWAY_URL``   gateway URL, e.g. ``ws://127.0.0.1:8090/`` (optional)
``LETSFRAG_HEARTBEAT_INTERVAL``    seconds between heartbeats
``LETSFRAG_LEASE_TTL``             host lease TTL in seconds (the dispatch guard's horizon)
``LETSFRAG_MAX_CONCURRENCY``       Discord's identify max_concurrency
``LETSFRAG_IDENTIFY_WINDOW``       seconds per identify window
``LETSFRAG_SIGNATURE_WINDOW``      the host's ``signature_window`` in seconds (the bus's age limit)
``LETSFRAG_MAX_MESSAGE_BYTES``     the host's ``max_message_bytes`` (the bus's size cap)
``LETSFRAG_ALLOW_EVAL``            ``1`` when both broker and host allow ``broadcast_eval``
``LETSFRAG_LOG_FORMAT``            ``json`` when the supervisor logs JSON lines (the cluster does too), else ``plain``
``LETSFRAG_CLAIM_EVENTS``          comma list of the gateway events claimed before handling (empty: none)
``LETSFRAG_HANDOVER``              ``1`` in a handover successor (``contract.handover``): gated until the switch
``LETSFRAG_IPC_FD``                the cluster's end of the supervisor socketpair
=================================  =============================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .claims import DEFAULT_CLAIM_EVENTS, check_claim_events, check_run
from .contract.envelope import DEFAULT_MAX_BYTES, DEFAULT_WINDOW
from .errors import NotInClusterError

PREFIX = "LETSFRAG_"

HOW_TO_RUN = (
    "this bot takes its shards from a letsfrag supervisor: start it with "
    "`letsfrag supervise configs/host.yaml` (with a broker) or `letsfrag run configs/local.yaml`"
)


@dataclass(frozen=True)
class ClusterEnvironment:
    """Everything a cluster process learns from its supervisor."""

    cluster_id: int
    shard_ids: tuple[int, ...]
    shard_count: int
    host_id: str
    host_incarnation: str
    epoch: int
    redis: dict[str, Any]
    namespace: str = "letsfrag"
    token: str = field(default="", repr=False)
    secret: str | None = field(default=None, repr=False)
    discord_api_url: str | None = None
    discord_gateway_url: str | None = None
    heartbeat_interval: float = 2.0
    lease_ttl: float = 10.0
    max_concurrency: int = 1
    identify_window: float = 5.0
    signature_window: float = DEFAULT_WINDOW
    max_message_bytes: int = DEFAULT_MAX_BYTES
    allow_eval: bool = False
    #: ``json`` or ``plain``: how the cluster process writes its log lines (the supervisor's ``--log-format``)
    log_format: str = "plain"
    claim_events: tuple[str, ...] = DEFAULT_CLAIM_EVENTS
    #: a handover successor (``LETSFRAG_HANDOVER=1``): identifies beside the current owner, gated until the switch
    handover: bool = False
    #: this process run's identity (``LETSFRAG_RUN``; empty: unknown, an older supervisor): in its claims' values
    run: str = ""
    #: earlier runs of this cluster and epoch that have exited (``LETSFRAG_DEAD_RUNS``, reaped by the supervisor):
    #: their pending claims are taken over (``letsfrag.claims``)
    dead_runs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            for run in (self.run, *self.dead_runs) if self.run else self.dead_runs:  # run empty: not given
                check_run(run)
        except ValueError as exc:
            raise ValueError(f"LETSFRAG_RUN / LETSFRAG_DEAD_RUNS: {exc}") from None
        try:
            object.__setattr__(self, "claim_events", check_claim_events(self.claim_events))
        except ValueError as exc:
            raise ValueError(f"LETSFRAG_CLAIM_EVENTS: {exc}") from None
        if not self.signature_window > 0:
            raise ValueError(f"LETSFRAG_SIGNATURE_WINDOW must be positive, found {self.signature_window!r}")
        if self.max_message_bytes < 1:
            raise ValueError(f"LETSFRAG_MAX_MESSAGE_BYTES must be at least 1, found {self.max_message_bytes!r}")

    @property
    def redis_url(self) -> str:
        return str(self.redis.get("url", "redis://127.0.0.1:6379/0"))

    def redis_settings(self) -> Any:
        """The Redis settings as a ``RedisSettings`` model."""
        from .config import RedisSettings

        return RedisSettings.model_validate(self.redis)

    def to_env(self) -> dict[str, str]:
        """The variables a supervisor sets for the child (merge with ``os.environ`` and ``bot.env``)."""
        env = {
            "LETSFRAG_CLUSTER_ID": str(self.cluster_id),
            "LETSFRAG_SHARD_IDS": ",".join(str(s) for s in self.shard_ids),
            "LETSFRAG_SHARD_COUNT": str(self.shard_count),
            "LETSFRAG_HOST_ID": self.host_id,
            "LETSFRAG_HOST_INCARNATION": self.host_incarnation,
            "LETSFRAG_EPOCH": str(self.epoch),
            "LETSFRAG_REDIS_URL": self.redis_url,
            "LETSFRAG_REDIS": json.dumps(self.redis),
            "LETSFRAG_NAMESPACE": self.namespace,
            "LETSFRAG_TOKEN": self.token,
            "LETSFRAG_HEARTBEAT_INTERVAL": repr(self.heartbeat_interval),
            "LETSFRAG_LEASE_TTL": repr(self.lease_ttl),
            "LETSFRAG_MAX_CONCURRENCY": str(self.max_concurrency),
            "LETSFRAG_IDENTIFY_WINDOW": repr(self.identify_window),
            "LETSFRAG_SIGNATURE_WINDOW": repr(self.signature_window),
            "LETSFRAG_MAX_MESSAGE_BYTES": str(self.max_message_bytes),
            "LETSFRAG_ALLOW_EVAL": "1" if self.allow_eval else "0",
            "LETSFRAG_LOG_FORMAT": self.log_format,
            "LETSFRAG_CLAIM_EVENTS": ",".join(self.claim_events),
        }
        if self.handover:
            env["LETSFRAG_HANDOVER"] = "1"
        if self.run:
            env["LETSFRAG_RUN"] = self.run
        if self.dead_runs:
            env["LETSFRAG_DEAD_RUNS"] = ",".join(self.dead_runs)
        if self.secret:
            env["LETSFRAG_SECRET"] = self.secret
        if self.discord_api_url:
            env["LETSFRAG_DISCORD_API_URL"] = self.discord_api_url
        if self.discord_gateway_url:
            env["LETSFRAG_DISCORD_GATEWAY_URL"] = self.discord_gateway_url
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClusterEnvironment:
        """Read the contract; raise ``NotInClusterError`` (one clear sentence) when it is missing or broken."""
        env = os.environ if environ is None else environ
        if "LETSFRAG_CLUSTER_ID" not in env:
            raise NotInClusterError(HOW_TO_RUN)
        try:
            redis_json = env.get("LETSFRAG_REDIS")
            redis = json.loads(redis_json) if redis_json else {"url": env["LETSFRAG_REDIS_URL"]}
            return cls(
                cluster_id=int(env["LETSFRAG_CLUSTER_ID"]),
                shard_ids=tuple(int(s) for s in env["LETSFRAG_SHARD_IDS"].split(",") if s.strip()),
                shard_count=int(env["LETSFRAG_SHARD_COUNT"]),
                host_id=env["LETSFRAG_HOST_ID"],
                host_incarnation=env.get("LETSFRAG_HOST_INCARNATION", ""),
                epoch=int(env["LETSFRAG_EPOCH"]),
                redis=redis,
                namespace=env.get("LETSFRAG_NAMESPACE", "letsfrag"),
                token=env.get("LETSFRAG_TOKEN", ""),
                secret=env.get("LETSFRAG_SECRET") or None,
                discord_api_url=env.get("LETSFRAG_DISCORD_API_URL") or None,
                discord_gateway_url=env.get("LETSFRAG_DISCORD_GATEWAY_URL") or None,
                heartbeat_interval=float(env.get("LETSFRAG_HEARTBEAT_INTERVAL", "2")),
                lease_ttl=float(env.get("LETSFRAG_LEASE_TTL", "10")),
                max_concurrency=int(env.get("LETSFRAG_MAX_CONCURRENCY", "1")),
                identify_window=float(env.get("LETSFRAG_IDENTIFY_WINDOW", "5")),
                signature_window=float(env.get("LETSFRAG_SIGNATURE_WINDOW", repr(DEFAULT_WINDOW))),
                max_message_bytes=int(env.get("LETSFRAG_MAX_MESSAGE_BYTES", str(DEFAULT_MAX_BYTES))),
                allow_eval=env.get("LETSFRAG_ALLOW_EVAL") == "1",
                log_format="json" if env.get("LETSFRAG_LOG_FORMAT") == "json" else "plain",
                claim_events=_claim_events(env.get("LETSFRAG_CLAIM_EVENTS")),
                handover=env.get("LETSFRAG_HANDOVER") == "1",
                run=env.get("LETSFRAG_RUN", ""),
                dead_runs=tuple(r for r in (p.strip() for p in env.get("LETSFRAG_DEAD_RUNS", "").split(",")) if r),
            )
        except (KeyError, ValueError) as exc:
            raise NotInClusterError(f"the letsfrag environment is incomplete or invalid ({exc}); {HOW_TO_RUN}") from exc


def _claim_events(raw: str | None) -> tuple[str, ...]:
    """``LETSFRAG_CLAIM_EVENTS``: absent -> the default set, empty -> none."""
    if raw is None:
        return DEFAULT_CLAIM_EVENTS
    return tuple(name for name in (part.strip() for part in raw.split(",")) if name)
