"""Values read from Redis, validated: finite, bounded, typed — and the ``{ns}:layout`` record in one class.

Anything in Redis can be changed by hand (``HSET {ns}:layout lease_ttl inf``) or lost. Every reader turns a raw
value into a number through :func:`parse_int`/:func:`parse_float` (strict: a bad value raises a
:class:`~letsfrag.errors.RecordError` that names the key and the field) or :func:`lenient_float`/
:func:`lenient_int` (for display: a bad value reads as ``None``). Pure: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import RecordError

__all__ = [
    "CLOCK_OFFSET_WARN", "MAX_DURATION", "MAX_EPOCH", "MAX_SHARDS", "LayoutRecord", "RecordError", "clock_skew_text",
    "lenient_float", "lenient_int", "parse_epoch", "parse_float", "parse_int", "parse_running",
]

#: the largest shard count (and shards per cluster) a layout may name
MAX_SHARDS = 1_000_000
#: the longest duration (seconds) a Redis record may carry: an hour
MAX_DURATION = 3600.0
#: the largest epoch: exact in a Lua number (a double), far beyond any real deployment
MAX_EPOCH = 10**15 - 1
#: the largest IDENTIFY concurrency
MAX_CONCURRENCY = 4096
#: a host whose clock differs from Redis ``TIME`` by more than this (seconds) is flagged: its timestamps look
#: stale or from the future, and its signed messages may fall outside the signature window
CLOCK_OFFSET_WARN = 2.0


def _shown(raw: Any) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return repr(text[:80])


def parse_int(raw: Any, *, key: str, field: str, minimum: int = 0, maximum: int = MAX_EPOCH) -> int:
    """A decimal integer within ``[minimum, maximum]``; anything else (``1.5``, ``inf``, ``abc``, missing)
    raises :class:`RecordError` naming ``key`` and ``field``."""
    if raw is None:
        raise RecordError(key, field, "is missing")
    if isinstance(raw, bool):
        raise RecordError(key, field, f"must be an integer, found {raw!r}")
    if isinstance(raw, int):
        value = raw
    else:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        text = text.strip()
        if not text.lstrip("-").isdigit() or len(text) > 20:
            raise RecordError(key, field, f"must be an integer, found {_shown(raw)}")
        value = int(text)
    if not minimum <= value <= maximum:
        raise RecordError(key, field, f"must be between {minimum} and {maximum}, found {value}")
    return value


def parse_float(raw: Any, *, key: str, field: str, minimum: float = 0.0, maximum: float = MAX_DURATION,
                positive: bool = False) -> float:
    """A finite number within ``[minimum, maximum]`` (``> 0`` when ``positive``); ``nan``/``inf``/text/missing
    raise :class:`RecordError` naming ``key`` and ``field``."""
    if raw is None:
        raise RecordError(key, field, "is missing")
    if isinstance(raw, bool):
        raise RecordError(key, field, f"must be a number, found {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise RecordError(key, field, f"must be a number, found {_shown(raw)}") from None
    if not math.isfinite(value):
        raise RecordError(key, field, f"must be a finite number, found {_shown(raw)}")
    if positive and value <= 0:
        raise RecordError(key, field, f"must be greater than 0, found {value:g}")
    if not minimum <= value <= maximum:
        raise RecordError(key, field, f"must be between {minimum:g} and {maximum:g}, found {value:g}")
    return value


def lenient_float(raw: Any) -> float | None:
    """A finite number, or ``None`` for a missing, empty, non-numeric, NaN or infinite value (for display)."""
    if raw is None or raw == "" or isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def lenient_int(raw: Any) -> int | None:
    """:func:`lenient_float` truncated to an integer (``None`` when not a finite number)."""
    value = lenient_float(raw)
    return None if value is None else int(value)


def clock_skew_text(host: str, offset: float | None) -> str | None:
    """A sentence when ``offset`` (host clock minus Redis ``TIME``) exceeds :data:`CLOCK_OFFSET_WARN`."""
    if offset is None or abs(offset) <= CLOCK_OFFSET_WARN:
        return None
    side = "behind" if offset < 0 else "ahead of"
    return (f"host {host}: clock is {abs(offset):.1f}s {side} Redis TIME (its heartbeats look stale and its signed "
            "commands may be rejected; check NTP)")


def parse_epoch(raw: Any, *, key: str) -> int:
    """``{ns}:epoch``: missing is 0; otherwise a decimal integer in ``[0, MAX_EPOCH]`` (else :class:`RecordError`)."""
    if raw is None:
        return 0
    return parse_int(raw, key=key, field="value")


def parse_running(raw: Any, *, key: str) -> dict[int, int]:
    """A host record's ``running`` JSON ``{cluster id: epoch}``; malformed text or entries raise
    :class:`RecordError` (empty or missing is ``{}``)."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        raise RecordError(key, "running", f"must be a JSON object, found {_shown(raw)}") from None
    if not isinstance(data, dict):
        raise RecordError(key, "running", f"must be a JSON object, found {_shown(raw)}")
    out: dict[int, int] = {}
    for cluster, epoch in data.items():
        cid = parse_int(cluster, key=key, field="running", maximum=MAX_SHARDS)
        if isinstance(epoch, float) or not isinstance(epoch, int | str):
            raise RecordError(key, "running", f"epoch of cluster {cid} must be an integer, found {epoch!r}")
        out[cid] = parse_int(epoch, key=key, field="running")
    return out


_INTS = ("shard_count", "shards_per_cluster", "cluster_count", "max_concurrency")
_FLOATS = ("identify_window", "lease_ttl", "lease_grace", "heartbeat_interval")


@dataclass(frozen=True, slots=True)
class LayoutRecord:
    """The ``{ns}:layout`` hash: how shards form clusters and the timing every host uses (docs/redis.md).

    The broker (leader) writes it with :meth:`to_hash`; everyone reads it with :meth:`from_hash`, which
    accepts only values the broker could have written.
    """

    shard_count: int
    shards_per_cluster: int
    cluster_count: int
    max_concurrency: int
    identify_window: float
    lease_ttl: float
    lease_grace: float
    heartbeat_interval: float
    #: the broker's opt-in to ``broadcast_eval`` (field absent: false)
    allow_eval: bool = False
    updated_at: float | None = field(default=None, compare=False)

    @classmethod
    def from_hash(cls, data: Mapping[str, Any], *, key: str = "layout") -> LayoutRecord:
        """Parse and check the hash; :class:`RecordError` names the key and the first bad field."""
        values: dict[str, Any] = {}
        for name in _INTS:
            top = MAX_CONCURRENCY if name == "max_concurrency" else MAX_SHARDS
            values[name] = parse_int(data.get(name), key=key, field=name, minimum=1, maximum=top)
        for name in _FLOATS:
            values[name] = parse_float(data.get(name), key=key, field=name,
                                       positive=name != "lease_grace")
        values["allow_eval"] = data.get("allow_eval") == "1"
        stamp = data.get("updated_at")
        values["updated_at"] = lenient_float(stamp)
        record = cls(**values)
        clusters = -(-record.shard_count // record.shards_per_cluster)
        if record.cluster_count != clusters:
            raise RecordError(key, "cluster_count", f"must be {clusters} for {record.shard_count} shards in "
                              f"clusters of {record.shards_per_cluster}, found {record.cluster_count}")
        if record.heartbeat_interval >= record.lease_ttl:
            raise RecordError(key, "heartbeat_interval", f"must be less than lease_ttl ({record.lease_ttl:g}s), "
                              f"found {record.heartbeat_interval:g}")
        return record

    def to_hash(self) -> dict[str, str]:
        """The hash the broker writes (every value a string)."""
        out = {f.name: str(getattr(self, f.name)) for f in fields(self) if f.name not in ("updated_at", "allow_eval")}
        out["allow_eval"] = "1" if self.allow_eval else "0"
        if self.updated_at is not None:
            out["updated_at"] = f"{self.updated_at:.3f}"
        return out

    def differences(self, other: LayoutRecord) -> list[str]:
        """The names of the fields (``updated_at`` aside) whose values differ from ``other``'s."""
        return [f.name for f in fields(self)
                if f.name != "updated_at" and getattr(self, f.name) != getattr(other, f.name)]

    @property
    def geometry(self) -> tuple[int, int]:
        """``(shard_count, shards_per_cluster)``: what fixes each cluster's shard range."""
        return self.shard_count, self.shards_per_cluster

    def shards_of(self, cluster_id: int) -> tuple[int, ...]:
        """The contiguous block of shards of ``cluster_id`` (empty when outside the layout)."""
        start = cluster_id * self.shards_per_cluster
        return tuple(range(start, min(start + self.shards_per_cluster, self.shard_count)))

    def cluster_of_guild(self, guild_id: int) -> int:
        """The cluster running the shard Discord routes ``guild_id`` to."""
        return ((guild_id >> 22) % self.shard_count) // self.shards_per_cluster
