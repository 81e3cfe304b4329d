"""Pure bookkeeping of planned handovers (see :mod:`letsfrag.contract.handover` for the protocol); no I/O, no clock.

The records themselves live in ``{ns}:handover`` (the leader broker writes them with fenced scripts, see
:class:`letsfrag.broker.store.Store`); every tick the broker reads them back and asks :func:`decide` what to do
with each one, given ``now`` (Redis ``TIME``, the clock the records' ``started`` and ``deadline`` were written
with, so a new leader judges them exactly as the old one would):

* **preparing** → ``switch`` when the target host reports the successor of that epoch ``ready``;
  ``rollback`` when the source or target host is not alive, the report says ``failed``, the deadline passed,
  or the assignment no longer names the source at its epoch (someone else moved the cluster);
* **switched** → ``done`` when the source confirmed ``cluster_stopped`` for the source epoch, its record's
  ``running`` no longer holds the cluster at that epoch, the source host is not alive, the assignment no
  longer names the target at the new epoch, or the stop deadline passed (then the reason says so).

The gates (:func:`slot_refusal`, :func:`budget_refusal`) return one sentence naming the numbers when a new
handover must not start. **Capacity**: a host runs at most ``capacity + 1`` cluster processes, the extra one
being the successor of the single handover that may target it at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from letsfrag.contract.handover import HandoverRecord, HandoverState, SuccessorState

from .moves import HostFacts

__all__ = [
    "HandoverAction",
    "HandoverBook",
    "HandoverStep",
    "budget_refusal",
    "decide",
    "reserve_of",
    "slot_refusal",
]


class HandoverAction(StrEnum):
    """What the broker does with one handover record this tick."""

    WAIT = "wait"
    SWITCH = "switch"
    ROLLBACK = "rollback"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class HandoverStep:
    """The decision for one record; ``reason`` is a short phrase for events and replies."""

    record: HandoverRecord
    action: HandoverAction
    reason: str = ""


def decide(record: HandoverRecord, now: float, hosts: Mapping[str, HostFacts],
           assigned: tuple[str, int] | None, *, stopped: bool = False) -> HandoverStep:
    """The next step of ``record`` at ``now``; ``assigned`` is ``(host, epoch)`` of the cluster's assignment
    (``None``: unassigned); ``stopped``: the source confirmed ``cluster_stopped`` for the source epoch."""
    source = hosts.get(record.from_host)
    target = hosts.get(record.host)
    if record.state is HandoverState.PREPARING:
        if assigned != (record.from_host, record.from_epoch):
            return HandoverStep(record, HandoverAction.ROLLBACK, "the assignment changed")
        if source is None or not source.alive:
            return HandoverStep(record, HandoverAction.ROLLBACK, f"the source host {record.from_host} is not alive")
        if target is None or not target.alive:
            return HandoverStep(record, HandoverAction.ROLLBACK, f"the target host {record.host} is not alive")
        report = target.successors.get(record.cluster)
        if report is not None and report.epoch == record.epoch:
            if report.state is SuccessorState.FAILED:
                why = f": {report.reason}" if report.reason else ""
                return HandoverStep(record, HandoverAction.ROLLBACK, f"the successor failed{why}")
            if report.state is SuccessorState.READY:
                return HandoverStep(record, HandoverAction.SWITCH, "the successor is ready")
        if now > record.deadline:
            return HandoverStep(record, HandoverAction.ROLLBACK,
                        f"the successor was not ready within {record.deadline - record.started:.0f}s")
        return HandoverStep(record, HandoverAction.WAIT)
    # switched: waiting for the source to stop its process of the source epoch
    if stopped:
        return HandoverStep(record, HandoverAction.DONE, "the source confirmed the stop")
    if source is None or not source.alive:
        return HandoverStep(record, HandoverAction.DONE, f"the source host {record.from_host} is not alive")
    if source.running.get(record.cluster) != record.from_epoch:
        return HandoverStep(record, HandoverAction.DONE, "the source no longer runs it")
    if assigned != (record.host, record.epoch):
        return HandoverStep(record, HandoverAction.DONE, "the assignment changed")
    if now > record.deadline:
        return HandoverStep(record, HandoverAction.DONE,
                            f"the source {record.from_host} did not confirm the stop in time")
    return HandoverStep(record, HandoverAction.WAIT)


class HandoverBook:
    """The handover records of the last snapshot, and the ``cluster_stopped`` confirmations received."""

    def __init__(self) -> None:
        self.records: dict[int, HandoverRecord] = {}
        self._stopped: set[tuple[int, str, int]] = set()

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, cluster: object) -> bool:
        return cluster in self.records

    def load(self, records: Mapping[int, HandoverRecord]) -> None:
        """The records read from Redis this tick (the truth); confirmations of records gone are forgotten. The
        records of a reshard's new clusters are the reshard's (:mod:`.reshard`), not kept here."""
        self.records = {c: r for c, r in records.items() if not r.resharding}
        self._stopped = {s for s in self._stopped if s[0] in self.records}

    def put(self, record: HandoverRecord) -> None:
        """A record this broker just wrote."""
        self.records[record.cluster] = record

    def forget(self, cluster: int) -> None:
        """A record this broker just deleted."""
        self.records.pop(cluster, None)
        self._stopped = {s for s in self._stopped if s[0] != cluster}

    def confirm_stopped(self, cluster: int, host: str, epoch: int | None) -> bool:
        """A ``cluster_stopped`` message; True when it ends the handover of ``cluster`` (its source, at the
        source epoch or later). One that arrives before the record was read is kept until the next load."""
        record = self.records.get(cluster)
        if epoch is None:
            return False
        self._stopped.add((cluster, host, epoch))
        return record is not None and record.from_host == host and epoch >= record.from_epoch

    def stopped(self, record: HandoverRecord) -> bool:
        """The source confirmed stopping its process of the source epoch (not the successor's)."""
        return any(c == record.cluster and h == record.from_host and record.from_epoch <= e < record.epoch
                   for c, h, e in self._stopped)

    def steps(self, now: float, hosts: Mapping[str, HostFacts],
              assignment: Mapping[int, tuple[str, int]]) -> list[HandoverStep]:
        """Every record's decision that is not ``wait``, in cluster order."""
        out: list[HandoverStep] = []
        for cluster, record in sorted(self.records.items()):
            step = decide(record, now, hosts, assignment.get(cluster), stopped=self.stopped(record))
            if step.action is not HandoverAction.WAIT:
                out.append(step)
        return out

    def targeting(self, host: str) -> HandoverRecord | None:
        """The handover whose successor prepares on ``host`` (not yet switched), if any."""
        return next((r for r in self.preparing() if r.host == host), None)

    def preparing(self) -> list[HandoverRecord]:
        """Records not yet switched."""
        return [r for r in self.records.values() if r.state is HandoverState.PREPARING]

    def sources(self, host: str) -> list[int]:
        """Clusters being handed away from ``host`` (either state)."""
        return sorted(c for c, r in self.records.items() if r.from_host == host)

    def epochs(self) -> Iterable[int]:
        """Every epoch the records use (a new leader's epoch floor includes them)."""
        for record in self.records.values():
            yield record.epoch
            yield record.from_epoch


def slot_refusal(cluster: int, target: str, *, capacity: int, held: int, in_place: bool,
                 busy: HandoverRecord | None) -> str | None:
    """Why ``target`` has no slot for a successor of ``cluster`` (``None``: it has one).

    ``held``: clusters the assignment gives ``target`` (a planned handover counts at its source until the switch);
    ``in_place``: a restart on the host that runs it (it keeps its count: the successor takes the +1 slot)."""
    if busy is not None:
        return (f"host {target} already receives a handover (cluster {busy.cluster}, epoch {busy.epoch}); "
                "one at a time per host")
    if not in_place and held >= capacity:
        return f"host {target} has no free slot: it runs {held} of its capacity {capacity}"
    return None


def reserve_of(total: int, reserve_fraction: float) -> int:
    """The session starts kept back from Discord's daily ``total`` (``identify_reserve``), rounded up."""
    return math.ceil(total * reserve_fraction)


def budget_refusal(cluster: int, shards: int, *, total: int | None, remaining: int | None,
                   reserve_fraction: float) -> str | None:
    """Why the identify budget cannot pay ``shards`` IDENTIFYs for a handover of ``cluster`` (``None``: it can,
    or the budget is unknown: no ``{ns}:identify:budget``)."""
    if total is None or remaining is None:
        return None
    reserve = reserve_of(total, reserve_fraction)
    if remaining - reserve >= shards:
        return None
    return (f"the identify budget cannot pay a handover of cluster {cluster}: {remaining} session starts remain, "
            f"{reserve} are the reserve, and its {shards} shard(s) need {shards}")
