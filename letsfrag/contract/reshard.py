"""Resharding without downtime: layout generations and the one record broker, supervisors and clusters agree on
(pure, no I/O).

**Generations.** ``{ns}:layout`` (:class:`~.records.LayoutRecord`) carries a ``generation`` (1 until the
first reshard; a layout written before generations existed reads as 1) and a ``cluster_base``: the generation's
clusters are ids ``cluster_base .. cluster_base + cluster_count - 1``. Generation g+1's clusters take the ids
right after g's (``cluster_base(g+1) = cluster_base(g) + cluster_count(g)``), so a cluster id is never reused by a
later generation and **every per-cluster key** (``{ns}:assignment`` field, ``{ns}:handover`` field,
``{ns}:status:*:{id}``, ``{ns}:sessions:{id}``, the inbox channel) of g+1 lives beside g's without a new key
scheme. A reshard 8 → 16 shards in clusters of 4 replaces clusters 0–1 by clusters 2–5.

**The record.** ``{ns}:reshard`` (a string, :class:`ReshardRecord` JSON, written only by the leader broker with
fenced scripts) exists while a reshard runs: the generations, the new layout hash, the new clusters with their
host and epoch, the old clusters to retire, its state and deadline (Redis ``TIME``).

1. **preparing** — one fenced script writes the record and, for each new cluster C, a ``preparing``
   :class:`~.handover.HandoverRecord` in ``{ns}:handover`` with a new epoch, the target host, no source,
   and the new generation and its geometry (``generation``, ``shard_count``, ``shards_per_cluster``,
   ``cluster_base``). The target host's supervisor spawns C exactly like a handover successor
   (``LETSFRAG_HANDOVER=1``; its shards and ``shard_count`` from the record): it identifies through the global
   identify queue (by the new shard ids' buckets), parses everything and keeps its claimable events in its gate;
   its guard sees a successor (the record names it, C is unassigned) and skips the live layout's shard check,
   which is the old generation's. Its supervisor reports it ``ready`` in the host record's ``successors``
   field, as for a handover.
2. **switched** — when every new cluster is reported ready, one fenced script, at one instant for all of them:
   checks every record still names its (host, epoch), writes their grants, deletes the old generation's grants,
   marks the handover records ``switched`` and replaces ``{ns}:layout`` by the new generation's. From then on:
   g+1's processes are the owners: their gates release the kept events through the claims
   (:mod:`letsfrag.claims`, keyed by the event's identity, not by shard or shard count) so an event g already
   handled is dropped; g's processes find their cluster below the live ``cluster_base`` and unassigned: *handed
   over* (they still dispatch through the claims, open no new session and write nothing an owner writes) until
   their supervisors, which no longer see a grant, stop them gracefully (claims in flight finish, sessions close
   with 1000) and confirm ``cluster_stopped``.
3. **done** — once no host runs an old cluster (or the stop deadline passed), one fenced script deletes the new
   clusters' handover records (they become exclusive: everything is dispatched), the old clusters' keys and the
   reshard record.

**Rollback** (before the switch only): a new cluster's successor reported ``failed``, its host is not alive, or
the deadline passed before every one was ready → one fenced script deletes the new clusters' handover records and
the reshard record; the supervisors stop the successors; g never stopped serving. The epochs are never reused.

**Capacity during the overlap**: g+1's processes run beside g's until the switch; each counts against its host's
``capacity`` as an old one does (the planner, :mod:`letsfrag.broker.reshard_plan`, places them in the free slots and
refuses when there are too few); the handover's ``capacity + 1`` slot is not used. No handover, move or
rebalance starts while a reshard runs, and no reshard starts while a handover runs.

**A restarted broker** of a running deployment keeps the stored layout's geometry: changing the shard count is a
reshard, never a silent restart. The layout records the ``shards`` of the config it was written from
(``config_shards``): a broker whose config names another count reshards to it, the same way, once every cluster is
assigned (event ``reshard_from_config``); one whose config still names the count a ``letsfrag reshard`` started
from keeps the reshard's count (event ``layout_generation_kept``). ``shards: auto`` never reshards by itself, and
a changed ``shards_per_cluster`` is kept as stored (a reshard keeps the cluster size).

**Close 4011** ("sharding required": a shard holds too many guilds): the cluster goes FAILED as for any fatal
close (it cannot reconnect), and its supervisor lists it in the host record's ``sharding_required`` field
(:data:`SHARDING_REQUIRED_FIELD`, JSON list of cluster ids) while it is granted there. The leader broker then
reshards the whole layout (once per generation) to the count ``/gateway/bot`` recommends, or to twice the current
count when that is not more (:func:`letsfrag.broker.reshard_plan.sharding_target`): every shard's guilds split between
``i`` and ``i + N`` of ``2N``. Resharding everything rather than only the oversized shard keeps one shard count per
generation (every other rule stays as it is), at the price of ``N`` more IDENTIFYs than disgo's split; the
oversized shard's guilds are offline until the new generation switches.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import RecordError
from .keys import Keys
from .records import MAX_EPOCH, MAX_SHARDS, Grant, LayoutRecord, parse_float, parse_int, parse_json

__all__ = ["SHARDING_REQUIRED_FIELD", "ReshardRecord", "ReshardState", "parse_sharding_required",
           "retired_cluster_keys"]

#: the host record field (``{ns}:host:{id}``) listing the granted clusters Discord closed with 4011, JSON list
SHARDING_REQUIRED_FIELD = "sharding_required"

#: the latest wall-clock time a record may carry (year ~33658)
_MAX_TIME = 1e12


class ReshardState(StrEnum):
    """Where a reshard is; the ``state`` of its :class:`ReshardRecord`."""

    PREPARING = "preparing"  # g+1's processes start beside g's, gated; the live layout is g's
    SWITCHED = "switched"    # the live layout is g+1's; g's processes are stopping


@dataclass(frozen=True, slots=True)
class ReshardRecord:
    """``{ns}:reshard``: the reshard in progress (see the module docs). Written only by the leader broker."""

    generation: int
    from_generation: int
    state: ReshardState
    started: float
    deadline: float
    #: the new generation's ``{ns}:layout`` hash (what the switch writes)
    layout: Mapping[str, str]
    #: the new clusters: id -> host and epoch of its process
    clusters: Mapping[int, Grant]
    #: the old generation's cluster ids (retired after the switch)
    retiring: tuple[int, ...] = ()
    switched: float | None = None

    @classmethod
    def from_json(cls, raw: Any, *, key: str = "reshard") -> ReshardRecord:
        """Parse the value; a :class:`RecordError` names ``key`` and what is wrong."""
        data = parse_json(raw, key=key, field="value")
        try:
            state = ReshardState(str(data.get("state")))
        except ValueError:
            raise RecordError(key, "state", f"is unknown: {data.get('state')!r}") from None
        layout, clusters, retiring = data.get("layout"), data.get("clusters"), data.get("retiring")
        if not isinstance(layout, Mapping) or not isinstance(clusters, Mapping) or not clusters:
            raise RecordError(key, "value", "needs the objects 'layout' and 'clusters' (not empty)")
        if not isinstance(retiring, list):
            raise RecordError(key, "retiring", "must be a list of cluster ids")
        new_layout = {str(k): str(v) for k, v in layout.items()}
        LayoutRecord.from_hash(new_layout, key=f"{key}.layout")
        switched = data.get("switched")
        return cls(
            generation=parse_int(data.get("generation"), key=key, field="generation", minimum=2, maximum=MAX_EPOCH),
            from_generation=parse_int(data.get("from_generation"), key=key, field="from_generation", minimum=1,
                                      maximum=MAX_EPOCH),
            state=state,
            started=parse_float(data.get("started"), key=key, field="started", maximum=_MAX_TIME),
            deadline=parse_float(data.get("deadline"), key=key, field="deadline", maximum=_MAX_TIME),
            layout=new_layout,
            clusters={parse_int(cid, key=key, field="clusters", maximum=MAX_SHARDS):
                      Grant.from_data(grant, key=key, field=f"clusters.{cid}") for cid, grant in clusters.items()},
            retiring=tuple(parse_int(c, key=key, field="retiring", maximum=MAX_SHARDS) for c in retiring),
            switched=None if switched is None else parse_float(switched, key=key, field="switched",
                                                               maximum=_MAX_TIME),
        )

    def to_json(self) -> str:
        """The value (the broker's scripts write the same shape)."""
        data: dict[str, Any] = {
            "generation": self.generation, "from_generation": self.from_generation, "state": str(self.state),
            "started": self.started, "deadline": self.deadline, "layout": dict(self.layout),
            "clusters": {str(c): {"host": g.host, "epoch": g.epoch} for c, g in sorted(self.clusters.items())},
            "retiring": list(self.retiring)}
        if self.switched is not None:
            data["switched"] = self.switched
        return json.dumps(data, separators=(",", ":"))

    @property
    def new_layout(self) -> LayoutRecord:
        """The new generation's layout."""
        return LayoutRecord.from_hash(self.layout)

    def progress(self, ready: int) -> dict[str, Any]:
        """The ``{ns}:broker`` ``operation`` value while it runs (for status and the command's progress)."""
        return {"kind": "reshard", "generation": self.generation, "from_generation": self.from_generation,
                "state": str(self.state), "ready": ready, "total": len(self.clusters),
                "retiring": len(self.retiring)}


def retired_cluster_keys(keys: Keys, cluster_ids: tuple[int, ...] | list[int]) -> list[str]:
    """Every per-cluster key of ``cluster_ids`` (a retired generation's, or a rolled-back one's): status, shard
    status, errors, restarts, metrics and session records."""
    out: list[str] = []
    for cid in cluster_ids:
        out += [keys.cluster_status(cid), keys.shard_status(cid), keys.cluster_errors(cid),
                keys.cluster_restarts(cid), keys.cluster_metrics(cid), keys.session_records(cid)]
    return out



def parse_sharding_required(raw: Any, *, key: str = "host") -> list[int]:
    """The :data:`SHARDING_REQUIRED_FIELD` of a host record (missing or empty: none); :class:`RecordError` when it
    is not a JSON list of cluster ids."""
    if raw in (None, ""):
        return []
    data = parse_json(raw, key=key, field=SHARDING_REQUIRED_FIELD, expect=list, of="cluster ids")
    return sorted({parse_int(c, key=key, field=SHARDING_REQUIRED_FIELD, maximum=MAX_SHARDS) for c in data})
