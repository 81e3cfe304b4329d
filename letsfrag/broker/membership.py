"""Pure judgement of host membership from lease observations (no I/O; the caller passes ``now``).

A host is **up** while its lease key exists. When the lease is missing the host is **late**; it becomes
**lost** only after the lease has been missing for ``grace`` seconds of *continuous* observation: every
observation gap longer than ``max_gap`` and every Redis outage (:meth:`Membership.reset`) starts the timers
again, so no host is judged lost because the broker could not see Redis. A host whose record says
``leaving`` (or that sent ``host_leave``) and has no lease has **left** at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from letsfrag.contract.states import HostRecordState

__all__ = ["HostObservation", "HostVerdict", "Membership", "Transition"]


class HostVerdict(StrEnum):
    """The broker's view of one host."""

    UP = "up"
    LATE = "late"  # lease missing, grace not yet over: still counted as alive
    LEAVING = "leaving"  # lease present, record says leaving: keeps its clusters but receives nothing
    LOST = "lost"
    LEFT = "left"

    @property
    def alive(self) -> bool:
        """True when the host's clusters stay where they are."""
        return self in (HostVerdict.UP, HostVerdict.LATE, HostVerdict.LEAVING)


@dataclass(frozen=True, slots=True)
class HostObservation:
    """One host as read from Redis in one tick."""

    lease: bool  # the lease key exists
    state: str = HostRecordState.UP  # the record's ``state`` field
    said_leave: bool = False  # a ``host_leave`` message arrived since it last registered


@dataclass(frozen=True, slots=True)
class Transition:
    """A host whose verdict changed in this observation."""

    host: str
    before: HostVerdict | None
    after: HostVerdict


class Membership:
    """Tracks verdicts across observations. ``grace`` and ``max_gap`` are seconds on the caller's clock."""

    def __init__(self, grace: float, *, max_gap: float | None = None) -> None:
        self.grace = grace
        self.max_gap = max_gap
        self.verdicts: dict[str, HostVerdict] = {}
        self._missing_since: dict[str, float] = {}
        self._last_observed: float | None = None

    def reset(self) -> None:
        """Forget every lease timer (a Redis outage: leases are judged afresh, with grace)."""
        self._missing_since.clear()
        self._last_observed = None

    def missing_for(self, host: str, now: float) -> float:
        """Seconds the host's lease has been seen missing (0 when present or unknown)."""
        since = self._missing_since.get(host)
        return 0.0 if since is None else now - since

    def observe(self, now: float, hosts: Mapping[str, HostObservation]) -> list[Transition]:
        """Judge every host in ``hosts``; hosts absent from it are forgotten. Return the verdict changes."""
        if self._last_observed is not None and self.max_gap is not None and now - self._last_observed > self.max_gap:
            self._missing_since.clear()
        self._last_observed = now
        changes: list[Transition] = []
        for host, seen in hosts.items():
            verdict = self._judge(host, seen, now)
            before = self.verdicts.get(host)
            if verdict != before:
                changes.append(Transition(host, before, verdict))
            self.verdicts[host] = verdict
        for host in list(self.verdicts):
            if host not in hosts:
                del self.verdicts[host]
                self._missing_since.pop(host, None)
        return changes

    def _judge(self, host: str, seen: HostObservation, now: float) -> HostVerdict:
        if seen.lease:
            self._missing_since.pop(host, None)
            if seen.state == HostRecordState.LEAVING:
                return HostVerdict.LEFT if seen.said_leave else HostVerdict.LEAVING
            return HostVerdict.UP
        if seen.state == HostRecordState.LEAVING or seen.said_leave:
            self._missing_since.pop(host, None)
            return HostVerdict.LEFT
        before = self.verdicts.get(host)
        if before in (HostVerdict.LOST, HostVerdict.LEFT):
            return before
        if seen.state == HostRecordState.LOST and before is None:
            return HostVerdict.LOST  # judged lost earlier (by this or another broker) and still without a lease
        since = self._missing_since.setdefault(host, now)
        return HostVerdict.LOST if now - since >= self.grace else HostVerdict.LATE
