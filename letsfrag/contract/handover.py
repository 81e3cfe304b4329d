"""Planned handover of a cluster: the records broker, supervisors and cluster processes agree on (pure, no I/O).

A planned move of cluster C (restart, rolling restart, drain, rebalance, on-join, a supervisor leaving) starts a
*successor* process P_new while the current process P_old keeps serving, then switches at one decided instant:

1. **preparing** — the leader broker writes ``HSET {ns}:handover <C> <HandoverRecord JSON>`` (fenced by the
   leader lock): the target host, a *new* epoch, the source host and epoch, the reason, a deadline. The
   assignment still names P_old. The target host's supervisor reads the record with its grants and spawns
   P_new with ``LETSFRAG_HANDOVER=1`` (:data:`HANDOVER_ENV`). P_new may IDENTIFY (through the global identify
   queue) while the record names its host and epoch and its host's lease is valid; it parses every event (its
   cache fills) but runs no user handler: claimable events are kept, in order, in its gate.
2. P_new's shards are all READY: it sends IPC ``ready``; its supervisor publishes a :class:`SuccessorReport`
   (state ``ready``) in its host record's ``successors`` field (:data:`SUCCESSORS_FIELD`) and rings the broker
   (``host_hello``).
3. **switched** — the broker, in one fenced script, sets ``assignment[C] = {host: target, epoch: new}`` only if
   it still names the source epoch, and rewrites the record with state ``switched``. From then on P_new is the
   owner: it submits the events kept in its gate, then every new one, through the claims
   (:mod:`letsfrag.claims`), so an event P_old already handled is dropped and one P_old never saw is handled.
   Events outside the claim set are dispatched by P_new only once the record is gone (below): P_old may still
   dispatch them until it stops.
4. The source host sees its grant gone (or replaced, for a restart in place) and stops P_old gracefully (IPC
   ``stop``: it lets the claims in flight finish, closes its sessions with 1000 and exits), then confirms with
   ``cluster_stopped`` for the *source* epoch. The broker deletes the record (``HDEL {ns}:handover <C>``): P_new
   now dispatches everything.

**Rollback** (before the switch only): P_new not READY by ``deadline``, P_new's report says ``failed``, or the
target host is lost → the broker deletes the record; the target supervisor stops P_new; P_old never stopped
serving. The new epoch is never used again (epochs only grow). After the switch there is no rollback: a lost
target is an ordinary failover of C.

**A supervisor leaving** (SIGTERM) asks the broker to hand its clusters to other hosts (``host_leave``) and waits
until it holds none; when the broker finds no room anywhere it writes :data:`HANDOFF_BLOCKED_FIELD` in that
host's record and the supervisor stops the rest as before.

**Capacity**: a host runs at most ``capacity + 1`` cluster processes; the extra slot is a successor. The broker
runs at most one handover per target host at a time.

**Referee**: a successor opens its gateway connection with ``?letsfrag_handover=<epoch>``
(:data:`GATEWAY_PARAM`, ignored by Discord), so the simulator tells an announced overlap from a split brain.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import RecordError
from .records import MAX_EPOCH, MAX_SHARDS, LayoutRecord, parse_float, parse_int, parse_json

__all__ = [
    "GATEWAY_PARAM",
    "HANDOFF_BLOCKED_FIELD",
    "HANDOVER_ENV",
    "OPERATION_FIELD",
    "SUCCESSORS_FIELD",
    "HandoverReason",
    "HandoverRecord",
    "HandoverState",
    "SuccessorReport",
    "SuccessorState",
    "parse_successors",
]

#: in a successor process's environment: ``"1"``
HANDOVER_ENV = "LETSFRAG_HANDOVER"
#: the gateway URL query parameter of a successor's connections (the simulator's referee reads it)
GATEWAY_PARAM = "letsfrag_handover"
#: the host record field (``{ns}:host:{id}``) holding this host's successor reports, JSON ``{cid: report}``
SUCCESSORS_FIELD = "successors"
#: host record field written by the leader broker when a *leaving* host's clusters cannot be handed to any other
#: host (no room anywhere): a sentence saying why; the supervisor then stops them as it always did, and says so
HANDOFF_BLOCKED_FIELD = "handoff_blocked"
#: ``{ns}:broker`` field: JSON of the operator operation in progress, e.g.
#: ``{"kind": "rolling", "host": "h0", "done": 2, "total": 4, "cluster": 5}`` (absent when none) for status/top
OPERATION_FIELD = "operation"
#: the latest wall-clock time a record may carry (year ~33658)
_MAX_TIME = 1e12


class HandoverState(StrEnum):
    """Where a handover is; the ``state`` of its :class:`HandoverRecord`."""

    PREPARING = "preparing"  # P_new starting / identifying / gated; the assignment names P_old
    SWITCHED = "switched"    # the assignment names P_new; P_old is stopping


class HandoverReason(StrEnum):
    """Why a cluster is handed over (also the ``reason`` of its events)."""

    RESTART = "restart"
    ROLLING = "rolling"
    DRAIN = "drain"
    REBALANCE = "rebalance"
    LEAVE = "leave"
    RESHARD = "reshard"


@dataclass(frozen=True, slots=True)
class HandoverRecord:
    """One field of ``{ns}:handover``: cluster id -> this record as JSON. Written only by the leader broker.

    Times are wall-clock epoch seconds (Redis ``TIME`` of the broker that wrote it). A record with a
    ``generation`` (> 0) starts a cluster of a layout generation being prepared by a reshard
    (:mod:`letsfrag.contract.reshard`): it has no source (``from_host`` empty, ``from_epoch`` 0) and carries that
    generation's geometry, from which the supervisor takes the cluster's shards."""

    cluster: int
    host: str
    epoch: int
    from_host: str
    from_epoch: int
    reason: str
    state: HandoverState
    started: float
    deadline: float
    #: the layout generation this record starts a cluster of (0: a handover of a running cluster)
    generation: int = 0
    #: that generation's ``shard_count``, ``shards_per_cluster`` and ``cluster_base`` (0 without a generation)
    shard_count: int = 0
    shards_per_cluster: int = 0
    cluster_base: int = 0

    @property
    def resharding(self) -> bool:
        """This record starts a cluster of a new layout generation (a reshard), not a successor of a running one."""
        return self.generation > 0

    def layout_of(self, live: LayoutRecord) -> LayoutRecord:
        """The layout this record's cluster runs in: ``live`` for a handover, its generation's for a reshard
        (the timing fields are the live layout's)."""
        if not self.resharding:
            return live
        return dataclasses.replace(live, generation=self.generation, shard_count=self.shard_count,
                                   shards_per_cluster=self.shards_per_cluster, cluster_base=self.cluster_base,
                                   cluster_count=-(-self.shard_count // self.shards_per_cluster))

    def to_json(self) -> str:
        """The field value."""
        data: dict[str, Any] = {
            "host": self.host, "epoch": self.epoch, "from_host": self.from_host, "from_epoch": self.from_epoch,
            "reason": self.reason, "state": str(self.state), "started": self.started, "deadline": self.deadline,
        }
        if self.resharding:
            data.update(generation=self.generation, shard_count=self.shard_count,
                        shards_per_cluster=self.shards_per_cluster, cluster_base=self.cluster_base)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, cluster: Any, raw: Any, *, key: str = "handover") -> HandoverRecord:
        """Parse one field; a :class:`RecordError` names ``key``, the cluster field and what is wrong."""
        field = str(cluster)
        cid = parse_int(cluster, key=key, field="cluster id", maximum=1_000_000)
        data = parse_json(raw, key=key, field=field)
        host, from_host = data.get("host"), data.get("from_host")
        generation = parse_int(data.get("generation", 0), key=key, field=f"{field}.generation", maximum=MAX_EPOCH)
        if not isinstance(host, str) or not host or not isinstance(from_host, str) or \
                not (from_host or generation):
            raise RecordError(key, field, "needs the strings 'host' and 'from_host'")
        geometry = {name: parse_int(data.get(name), key=key, field=f"{field}.{name}", minimum=1 if name !=
                                    "cluster_base" else 0, maximum=MAX_SHARDS)
                    for name in ("shard_count", "shards_per_cluster", "cluster_base")} if generation else {}
        try:
            state = HandoverState(str(data.get("state")))
        except ValueError:
            raise RecordError(key, field, f"has an unknown state {data.get('state')!r}") from None
        return cls(
            cluster=cid, host=host, from_host=from_host, state=state, reason=str(data.get("reason") or ""),
            epoch=parse_int(data.get("epoch"), key=key, field=f"{field}.epoch", minimum=1, maximum=MAX_EPOCH),
            from_epoch=parse_int(data.get("from_epoch"), key=key, field=f"{field}.from_epoch", maximum=MAX_EPOCH),
            started=parse_float(data.get("started"), key=key, field=f"{field}.started", maximum=_MAX_TIME),
            deadline=parse_float(data.get("deadline"), key=key, field=f"{field}.deadline", maximum=_MAX_TIME),
            generation=generation, **geometry,
        )

    @classmethod
    def parse_all(cls, data: Mapping[str, str], *, key: str = "handover") -> tuple[dict[int, HandoverRecord],
                                                                                   list[RecordError]]:
        """Every readable record of ``HGETALL {ns}:handover`` and the problems of the unreadable ones."""
        records: dict[int, HandoverRecord] = {}
        problems: list[RecordError] = []
        for field, raw in data.items():
            try:
                record = cls.from_json(field, raw, key=key)
            except RecordError as exc:
                problems.append(exc)
                continue
            records[record.cluster] = record
        return records, problems

    def names(self, host: str, epoch: int) -> bool:
        """Is ``(host, epoch)`` this handover's successor?"""
        return self.host == host and self.epoch == epoch


class SuccessorState(StrEnum):
    """A successor process as its supervisor reports it."""

    STARTING = "starting"  # spawned, identifying, not every shard READY yet
    READY = "ready"        # every shard READY, user dispatch gated: the broker may switch
    FAILED = "failed"      # it exited or could not start before the switch: the broker rolls back


@dataclass(frozen=True, slots=True)
class SuccessorReport:
    """One entry of a host record's ``successors`` field: the successor of ``cluster`` at ``epoch``."""

    cluster: int
    epoch: int
    state: SuccessorState
    pid: int | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON value under ``str(cluster)``."""
        return {"epoch": self.epoch, "state": str(self.state), "pid": self.pid, "reason": self.reason}

    @staticmethod
    def dump(reports: Mapping[int, SuccessorReport]) -> str:
        """The ``successors`` field value."""
        return json.dumps({str(cid): r.to_dict() for cid, r in sorted(reports.items())}, separators=(",", ":"))


def parse_successors(raw: Any, *, key: str = "host") -> dict[int, SuccessorReport]:
    """The ``successors`` field of a host record (missing or empty: none); a :class:`RecordError` when broken."""
    if raw in (None, ""):
        return {}
    data = parse_json(raw, key=key, field=SUCCESSORS_FIELD)
    reports: dict[int, SuccessorReport] = {}
    for cid_text, value in data.items():
        cid = parse_int(cid_text, key=key, field=SUCCESSORS_FIELD, maximum=1_000_000)
        if not isinstance(value, Mapping):
            raise RecordError(key, SUCCESSORS_FIELD, f"entry {cid_text!r} must be a JSON object")
        try:
            state = SuccessorState(str(value.get("state")))
        except ValueError:
            raise RecordError(key, SUCCESSORS_FIELD, f"entry {cid_text!r} has an unknown state") from None
        pid = value.get("pid")
        reports[cid] = SuccessorReport(
            cluster=cid, state=state, reason=str(value.get("reason") or ""),
            epoch=parse_int(value.get("epoch"), key=key, field=f"{SUCCESSORS_FIELD}.{cid_text}.epoch", minimum=1),
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None)
    return reports
