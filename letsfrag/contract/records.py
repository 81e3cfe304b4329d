"""Values read from Redis, validated: finite, bounded, typed — and the ``{ns}:layout`` and ``{ns}:assignment``
records, one class each (:class:`LayoutRecord`, :class:`Grant`).

Anything in Redis can be changed by hand (``HSET {ns}:layout lease_ttl inf``) or lost. Every reader turns a raw
value into a number through :func:`parse_int`/:func:`parse_float` (strict: a bad value raises a
:class:`~letsfrag.errors.RecordError` that names the key and the field) or :func:`lenient_float`/
:func:`lenient_int` (for display: a bad value reads as ``None``); a JSON field into an object or a list through
:func:`parse_json` (the same errors). Pure: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import RecordError

__all__ = [
    "CLOCK_OFFSET_WARN", "GEOMETRY_FIELDS", "GRANT_LUA", "LAYOUT_FALLBACKS", "MAX_DURATION", "MAX_EPOCH", "MAX_SHARDS",
    "ROUTING_FIELDS", "Grant", "LayoutRecord", "RecordError", "clock_skew_text", "lenient_float", "lenient_int",
    "parse_epoch", "parse_float", "parse_int", "parse_json", "parse_running",
]

#: the largest shard count (and shards per cluster) a layout may name
MAX_SHARDS = 1_000_000
#: the longest duration (seconds) a Redis record may carry: an hour
MAX_DURATION = 3600.0
#: the largest epoch, far beyond any real deployment: exact in a Lua number (a double) *and* in its text, which Lua
#: and cjson write with ``%.14g`` (14 digits: a larger epoch would reach the assignment as ``1e+14``)
MAX_EPOCH = 10**14 - 1
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


def parse_json(raw: Any, *, key: str, field: str, expect: type[dict[Any, Any]] | type[list[Any]] = dict,
               of: str = "") -> Any:
    """A JSON text (``str`` or ``bytes``) that must decode to an object (``expect=dict``) or a list
    (``expect=list``); anything else raises :class:`RecordError` naming ``key`` and ``field``: ``is not JSON: …``
    or ``must be a JSON object, found …`` (``must be a JSON list of <of>, found …`` with ``of``)."""
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        raise RecordError(key, field, f"is not JSON: {_shown(raw)}") from None
    if not isinstance(data, expect):
        kind = "object" if expect is dict else "list"
        raise RecordError(key, field, f"must be a JSON {kind}{f' of {of}' if of else ''}, found {_shown(raw)}")
    return data


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
    data = parse_json(raw, key=key, field="running")
    out: dict[int, int] = {}
    for cluster, epoch in data.items():
        cid = parse_int(cluster, key=key, field="running", maximum=MAX_SHARDS)
        if isinstance(epoch, float) or not isinstance(epoch, int | str):
            raise RecordError(key, "running", f"epoch of cluster {cid} must be an integer, found {epoch!r}")
        out[cid] = parse_int(epoch, key=key, field="running")
    return out


_INTS = ("shard_count", "shards_per_cluster", "cluster_count", "max_concurrency")
#: the generation fields: absent in a layout written before resharding existed, read as generation 1 whose
#: clusters start at id 0 (see :mod:`letsfrag.contract.reshard`)
_GENERATION_DEFAULTS = {"generation": 1, "cluster_base": 0}
_FLOATS = ("identify_window", "lease_ttl", "lease_grace", "heartbeat_interval")
#: the ``{ns}:layout`` fields that fix each cluster's shards
GEOMETRY_FIELDS = ("shard_count", "shards_per_cluster")
#: the fields an RPC caller routes by (``cluster_count`` as written: a layout may announce clusters not running)
ROUTING_FIELDS = ("shard_count", "shards_per_cluster", "cluster_count", "cluster_base")
#: what a reader that does not check a field (display, RPC) assumes for it when it is missing or unreadable: the
#: broker config's defaults (``max_concurrency: 1``, ``identify_window: 5s``, ``lease.ttl: 10s``,
#: ``lease.grace: 2s``, ``heartbeat_interval: 2s``), i.e. what a default broker would have written
LAYOUT_FALLBACKS: dict[str, float] = {"max_concurrency": 1, "identify_window": 5.0, "lease_ttl": 10.0,
                                      "lease_grace": 2.0, "heartbeat_interval": 2.0}


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
    #: the layout generation (1 until the first reshard; field absent: 1), see :mod:`letsfrag.contract.reshard`
    generation: int = 1
    #: the id of this generation's first cluster: its clusters are ``cluster_base ..
    #: cluster_base + cluster_count - 1`` (field absent: 0); ids are never reused by a later generation
    cluster_base: int = 0
    #: the ``shards`` of the config of the broker that wrote it (field absent: ``shard_count``): a broker restarted
    #: with another count reshards to it; one restarted with the same count keeps a reshard's count
    config_shards: int | None = field(default=None, compare=False)
    updated_at: float | None = field(default=None, compare=False)

    @classmethod
    def from_hash(cls, data: Mapping[str, Any], *, key: str = "layout",
                  only: tuple[str, ...] | None = None) -> LayoutRecord:
        """Parse and check the hash; :class:`RecordError` names the key and the first bad field.

        ``only`` (e.g. :data:`GEOMETRY_FIELDS`, :data:`ROUTING_FIELDS`): check just those fields, for a reader
        that needs no more; any other field that would fail its check reads as its :data:`LAYOUT_FALLBACKS`
        value, ``cluster_count`` (unless checked) is derived from the shards, and the checks across fields are
        skipped."""
        checked = frozenset(_INTS + _FLOATS if only is None else only)
        values: dict[str, Any] = {}
        for name in (*_INTS, *_FLOATS):
            try:
                if name in _INTS:
                    top = MAX_CONCURRENCY if name == "max_concurrency" else MAX_SHARDS
                    values[name] = parse_int(data.get(name), key=key, field=name, minimum=1, maximum=top)
                else:
                    values[name] = parse_float(data.get(name), key=key, field=name, positive=name != "lease_grace")
            except RecordError:
                if name in checked:
                    raise
                if name in LAYOUT_FALLBACKS:
                    fallback = LAYOUT_FALLBACKS[name]
                    values[name] = int(fallback) if name in _INTS else float(fallback)
        for name, default in _GENERATION_DEFAULTS.items():
            raw = data.get(name)
            try:
                values[name] = default if raw in (None, "") else parse_int(
                    raw, key=key, field=name, minimum=1 if name == "generation" else 0, maximum=MAX_EPOCH)
            except RecordError:
                if only is None or name in only:
                    raise
                values[name] = default
        if "cluster_count" not in values or "cluster_count" not in checked:
            values["cluster_count"] = -(-values["shard_count"] // values["shards_per_cluster"])
        values["allow_eval"] = data.get("allow_eval") == "1"
        values["updated_at"] = lenient_float(data.get("updated_at"))
        config_shards = lenient_int(data.get("config_shards"))
        values["config_shards"] = config_shards if config_shards is not None and 0 < config_shards <= MAX_SHARDS \
            else None
        record = cls(**values)
        if only is not None:
            return record
        clusters = -(-record.shard_count // record.shards_per_cluster)
        if record.cluster_count != clusters:
            raise RecordError(key, "cluster_count", f"must be {clusters} for {record.shard_count} shards in "
                              f"clusters of {record.shards_per_cluster}, found {record.cluster_count}")
        if record.heartbeat_interval >= record.lease_ttl:
            raise RecordError(key, "heartbeat_interval", f"must be less than lease_ttl ({record.lease_ttl:g}s), "
                              f"found {record.heartbeat_interval:g}")
        return record

    @classmethod
    def of_geometry(cls, shard_count: int, shards_per_cluster: int) -> LayoutRecord:
        """A record of this geometry (positive integers) whose other fields are their :data:`LAYOUT_FALLBACKS`."""
        return cls.from_hash({"shard_count": shard_count, "shards_per_cluster": shards_per_cluster},
                             only=GEOMETRY_FIELDS)

    @classmethod
    def for_display(cls, data: Mapping[str, Any]) -> LayoutRecord | None:
        """Read leniently for display: ``None`` without a usable shard count and cluster size; every other field
        falls back to :data:`LAYOUT_FALLBACKS`, and the cluster count is derived from the shards, so a hand-edited
        ``cluster_count`` cannot make a reader walk a billion clusters."""
        shards, per = lenient_int(data.get("shard_count")), lenient_int(data.get("shards_per_cluster"))
        if not shards or not per or not 0 < shards <= MAX_SHARDS or not 0 < per <= MAX_SHARDS:
            return None
        return cls.from_hash({**data, "shard_count": shards, "shards_per_cluster": per}, only=GEOMETRY_FIELDS)

    def to_hash(self) -> dict[str, str]:
        """The hash the broker writes (every value a string)."""
        skip = ("updated_at", "allow_eval", "config_shards")
        out = {f.name: str(getattr(self, f.name)) for f in fields(self) if f.name not in skip}
        if self.config_shards is not None:
            out["config_shards"] = str(self.config_shards)
        out["allow_eval"] = "1" if self.allow_eval else "0"
        if self.updated_at is not None:
            out["updated_at"] = f"{self.updated_at:.3f}"
        return out

    def differences(self, other: LayoutRecord) -> list[str]:
        """The names of the fields (``updated_at`` and ``config_shards`` aside) whose values differ from
        ``other``'s."""
        return [f.name for f in fields(self)
                if f.name not in ("updated_at", "config_shards") and getattr(self, f.name) != getattr(other, f.name)]

    @property
    def configured_shards(self) -> int:
        """The shard count of the config this layout was written from (:attr:`config_shards`, else the layout's)."""
        return self.config_shards if self.config_shards is not None else self.shard_count

    @property
    def geometry(self) -> tuple[int, int]:
        """``(shard_count, shards_per_cluster)``: what fixes each cluster's shard range."""
        return self.shard_count, self.shards_per_cluster

    @property
    def cluster_ids(self) -> range:
        """Every cluster id of the layout, ascending (from :attr:`cluster_base`)."""
        return range(self.cluster_base, self.cluster_base + self.cluster_count)

    @property
    def next_cluster_base(self) -> int:
        """The first cluster id of the next generation (right after this one's)."""
        return self.cluster_base + self.cluster_count

    def shards_of(self, cluster_id: int) -> tuple[int, ...]:
        """The contiguous block of shards of ``cluster_id`` (empty when outside the layout)."""
        index = cluster_id - self.cluster_base
        if index < 0:
            return ()
        start = index * self.shards_per_cluster
        return tuple(range(start, min(start + self.shards_per_cluster, self.shard_count)))

    def cluster_of_guild(self, guild_id: int) -> int:
        """The cluster running the shard Discord routes ``guild_id`` to."""
        return self.cluster_base + ((guild_id >> 22) % self.shard_count) // self.shards_per_cluster


#: Lua: ``grant_json(host, epoch)``, the :meth:`Grant.to_json` text written by the broker's scripts, and
#: ``grant_names(raw, host, epoch)``, whether an assignment field names ``host`` at ``epoch`` (anything unreadable
#: names nobody). Both are pasted into every script that writes or checks a grant.
GRANT_LUA = """
local function grant_json(host, epoch)
  return '{"host": ' .. cjson.encode(host) .. ', "epoch": ' .. string.format('%d', tonumber(epoch)) .. '}'
end
local function grant_names(raw, host, epoch)
  if not raw then return false end
  local ok, v = pcall(cjson.decode, raw)
  return ok and type(v) == 'table' and type(v.host) == 'string' and v.host == host
         and tonumber(v.epoch) == tonumber(epoch)
end
"""


@dataclass(frozen=True, slots=True)
class Grant:
    """One field of ``{ns}:assignment``: cluster id -> JSON ``{"host": id, "epoch": n}``. Written only by the
    leader broker (:meth:`to_json`, or :data:`GRANT_LUA`'s ``grant_json`` inside its scripts); read by the
    broker, the supervisors, the cluster processes and the status readers with :meth:`from_json`."""

    host: str
    epoch: int

    def to_json(self) -> str:
        """The field value."""
        return json.dumps({"host": self.host, "epoch": self.epoch})

    @classmethod
    def from_json(cls, raw: Any, *, key: str = "assignment", field: str = "?") -> Grant:
        """Parse one field value; :class:`RecordError` names ``key``, the cluster ``field`` and what is wrong."""
        return cls.from_data(parse_json(raw, key=key, field=field), key=key, field=field)

    @classmethod
    def from_data(cls, data: Any, *, key: str = "assignment", field: str = "?") -> Grant:
        """:meth:`from_json` of a value already decoded from JSON (a reader that unpacks many at once)."""
        if not isinstance(data, dict):
            raise RecordError(key, field, f"must be a JSON object, found {_shown(json.dumps(data))}")
        host, epoch = data.get("host"), data.get("epoch")
        if not isinstance(host, str) or not host:
            raise RecordError(key, field, f"needs a host name, found {host!r}")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise RecordError(key, field, f"epoch must be an integer, found {epoch!r}")
        return cls(host, parse_int(epoch, key=key, field=field))

    @classmethod
    def parse_all(cls, data: Mapping[Any, Any], *, key: str = "assignment") -> tuple[dict[int, Grant],
                                                                                  list[RecordError]]:
        """Every readable grant of ``HGETALL {ns}:assignment`` by cluster id, and the problems of the others."""
        grants: dict[int, Grant] = {}
        problems: list[RecordError] = []
        for cid, raw in data.items():
            try:
                grants[parse_int(cid, key=key, field=str(cid), maximum=MAX_SHARDS)] = cls.from_json(
                    raw, key=key, field=str(cid))
            except RecordError as exc:
                problems.append(exc)
        return grants, problems

    def names(self, host: str, epoch: int) -> bool:
        """Does this grant give the cluster to ``host`` at ``epoch``?"""
        return self.host == host and self.epoch == epoch
