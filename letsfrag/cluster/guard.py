"""Exactly-once handling, the pure part: who owns the shards, and may an event be dispatched now?

A cluster owns its shards while ``HGET {ns}:assignment <cid>`` equals its ``{host, epoch}`` and
``GET {ns}:lease:{host}`` equals its host's incarnation (docs/redis.md, "Assignment and fencing").
:func:`decide_ownership` turns those readings into an :class:`Ownership` verdict.

:class:`DispatchGuard` keeps the horizon ``valid_until = monotonic time the last successful check was SENT +
lease PTTL - margin``. Each event compares ``clock.monotonic() < valid_until`` synchronously, so a process that
wakes from a freeze (SIGSTOP/SIGCONT, a long pause) holds whatever it finds buffered before anything else runs.
Held events are released in order once a fresh check confirms ownership, or dropped when it fences.

Some readings decide nothing yet (:attr:`Ownership.undecided`): the layout is gone or flagged ``adopting``
(Redis lost its data; the broker re-adopts running clusters from their hosts' claims) while the assignment
field is missing, or the layout gives this cluster other shards than it runs (a hand-edited layout the broker
rewrites at its next tick). Then events stay held — neither dispatched nor dropped — until a later check
decides, and :func:`bound_undecided` turns a wait longer than its limit into a fence.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from ..clock import Clock
from ..contract.handover import HandoverRecord, HandoverState
from ..contract.records import GEOMETRY_FIELDS, Grant, LayoutRecord
from ..errors import RecordError

#: the ``{ns}:layout`` fields an ownership check reads
LAYOUT_FIELDS = ("shard_count", "shards_per_cluster", "adopting", "generation", "cluster_base")


@dataclass(frozen=True, slots=True)
class Ownership:
    """The verdict of one ownership check; ``ttl`` is how long it stays valid (seconds)."""

    owner: bool
    reason: str
    ttl: float = 0.0
    #: neither owner nor fenced yet: hold events and check again (see the module docs)
    undecided: bool = False
    #: a handover successor before the switch: may IDENTIFY, RESUME and parse, must not dispatch (``owner`` False)
    successor: bool = False
    #: an owner no handover record names as successor (a successor owner dispatches events outside the claims
    #: only once exclusive)
    exclusive: bool = True
    #: the old process of a switched handover: still serving until stopped, opens no new session
    handed_over: bool = False

    @property
    def fenced(self) -> bool:
        """Neither owner, successor nor undecided: close the sessions and exit."""
        return not (self.owner or self.successor or self.undecided)


def _layout_verdict(layout: Mapping[str, str | None], cluster_id: int, shard_ids: tuple[int, ...] | None,
                    key: str) -> Ownership | None:
    """An undecided verdict when the layout's shard range for ``cluster_id`` is not ``shard_ids`` (or unreadable)."""
    if shard_ids is None:
        return None
    try:
        expected = LayoutRecord.from_hash(layout, key=key, only=GEOMETRY_FIELDS).shards_of(cluster_id)
    except RecordError as exc:
        return Ownership(False, f"cannot check cluster {cluster_id}'s shards: {exc}", undecided=True)
    if expected != tuple(shard_ids):
        return Ownership(False, f"{key} gives cluster {cluster_id} shards {list(expected)[:8]} but this process "
                         f"runs {list(shard_ids)[:8]}", undecided=True)
    return None


def decide_ownership(
    assignment: str | None,
    lease_value: str | None,
    lease_pttl_ms: int,
    *,
    cluster_id: int,
    host_id: str,
    epoch: int,
    incarnation: str,
    default_ttl: float,
    layout: Mapping[str, str | None] | None = None,
    shard_ids: tuple[int, ...] | None = None,
    layout_key: str = "layout",
    assignment_key: str = "assignment",
    handover: str | None = None,
    successor: bool = False,
    handover_key: str = "handover",
) -> Ownership:
    """Judge the raw Redis readings (assignment field, lease value, lease PTTL in ms).

    ``layout`` holds the :data:`LAYOUT_FIELDS` of ``{ns}:layout`` (``None``: not read); with ``shard_ids``
    (what this process runs) each shard is checked against the layout, not only the cluster id. ``handover``
    is the cluster's ``{ns}:handover`` field (``None``: no record), ``successor`` whether this process was
    started as a handover successor and is not yet the exclusive owner (once it is, its
    :class:`~.ownership.OwnershipChecker` judges it as any owner: a later handover or reshard hands it over).
    """
    lease_problem = _lease_problem(lease_value, lease_pttl_ms, host_id, incarnation)
    ttl = default_ttl if lease_pttl_ms < 0 else lease_pttl_ms / 1000.0
    prepared = successor and _prepares_generation(handover, cluster_id, host_id, epoch, handover_key)
    if layout is not None:
        gone = all(layout.get(name) is None for name in LAYOUT_FIELDS)
        if (gone or layout.get("adopting")) and (assignment is None or lease_value is None):
            what = "is gone" if gone else "says the broker is adopting running clusters"
            return Ownership(False, f"{layout_key} {what} (Redis lost its data?): holding events until the broker "
                             f"adopts cluster {cluster_id}", undecided=True)
        retired = _retired_verdict(layout, assignment, lease_problem, ttl, cluster_id=cluster_id, successor=successor,
                                   key=layout_key)
        if retired is not None:
            return retired
        if not gone and not prepared:
            mismatch = _layout_verdict(layout, cluster_id, shard_ids, layout_key)
            if mismatch is not None and successor and assignment is None:
                return Ownership(False, f"{mismatch.reason}, and no reshard prepares cluster {cluster_id} here "
                                 "(rolled back)")
            if mismatch is not None:
                return mismatch
    if assignment is None:
        unassigned = Ownership(False, f"cluster {cluster_id} is no longer assigned to any host")
        if prepared:  # a cluster of a generation being prepared has no grant before the switch
            return _successor_verdict(handover, unassigned, lease_problem, ttl, cluster_id=cluster_id,
                                      host_id=host_id, epoch=epoch, key=handover_key)
        return unassigned
    try:
        grant = Grant.from_json(assignment, key=assignment_key, field=str(cluster_id))
    except RecordError as exc:
        return Ownership(False, f"cluster {cluster_id}'s assignment is unreadable: {exc}")
    granted_host, granted_epoch = grant.host, grant.epoch
    if granted_host != host_id or granted_epoch != epoch:
        moved = Ownership(
            False,
            f"cluster {cluster_id} now belongs to host {granted_host} epoch {granted_epoch} "
            f"(this process runs host {host_id} epoch {epoch})",
        )
        if successor:
            return _successor_verdict(handover, moved, lease_problem, ttl, cluster_id=cluster_id, host_id=host_id,
                                      epoch=epoch, key=handover_key)
        return _handed_over_verdict(handover, moved, lease_problem, ttl, cluster_id=cluster_id, host_id=host_id,
                                    epoch=epoch, granted=(granted_host, granted_epoch), key=handover_key)
    if lease_problem is not None:
        return Ownership(False, lease_problem)
    if not successor:
        return Ownership(True, "owner", ttl)
    return _successor_owner_verdict(handover, ttl, cluster_id=cluster_id, host_id=host_id, epoch=epoch,
                                    key=handover_key)


def _lease_problem(lease_value: str | None, lease_pttl_ms: int, host_id: str, incarnation: str) -> str | None:
    if lease_value is None or lease_pttl_ms == -2:
        return f"host {host_id}'s lease has expired"
    if lease_value != incarnation:
        return f"host {host_id}'s lease belongs to another incarnation of the host"
    return None


def _read_handover(raw: str | None, cluster_id: int, key: str) -> HandoverRecord | None:
    """The cluster's handover record (None: no record); raises :class:`RecordError` when unreadable."""
    if raw is None:
        return None
    return HandoverRecord.from_json(cluster_id, raw, key=key)


def _prepares_generation(raw: str | None, cluster_id: int, host_id: str, epoch: int, key: str) -> bool:
    """Does the cluster's handover record start this process for a layout generation being prepared (a reshard)?
    Its shards are that generation's, not the live layout's (checked by its supervisor against the record)."""
    try:
        record = _read_handover(raw, cluster_id, key)
    except RecordError:
        return False
    return record is not None and record.resharding and record.names(host_id, epoch)


def _retired_verdict(layout: Mapping[str, str | None], assignment: str | None, lease_problem: str | None, ttl: float,
                     *, cluster_id: int, successor: bool, key: str) -> Ownership | None:
    """A process of a generation a reshard retired: its cluster is below the live layout's ``cluster_base`` and no
    longer assigned (the switch deleted its grant). It is *handed over*: it serves through the claims until its
    supervisor stops it (see :mod:`letsfrag.contract.reshard`). ``None``: not a retired cluster."""
    try:
        live = LayoutRecord.from_hash(layout, key=key, only=("shard_count", "shards_per_cluster", "cluster_base"))
    except RecordError:
        return None
    if successor or assignment is not None or cluster_id >= live.cluster_base:
        return None
    if lease_problem is not None:
        return Ownership(False, lease_problem)
    return Ownership(True, f"cluster {cluster_id}'s generation was retired by the reshard to generation "
                     f"{live.generation}; serving until stopped", ttl, handed_over=True)


def _successor_verdict(raw: str | None, moved: Ownership, lease_problem: str | None, ttl: float, *, cluster_id: int,
                       host_id: str, epoch: int, key: str) -> Ownership:
    """A successor process the assignment does not name (yet)."""
    try:
        record = _read_handover(raw, cluster_id, key)
    except RecordError as exc:
        return Ownership(False, f"{moved.reason}; cannot read the handover record: {exc}")
    if record is None:
        return Ownership(False, f"{moved.reason} and no handover of cluster {cluster_id} is in progress "
                         "(rolled back)")
    if not record.names(host_id, epoch):
        return Ownership(False, f"{moved.reason}; the handover of cluster {cluster_id} now goes to host "
                         f"{record.host} epoch {record.epoch}")
    if record.state is not HandoverState.PREPARING:
        return Ownership(False, f"{moved.reason} although the handover record says {record.state}")
    if lease_problem is not None:
        return Ownership(False, lease_problem)
    if record.resharding:
        return Ownership(False, f"cluster {cluster_id} of generation {record.generation}, prepared by a reshard (the "
                         "live generation serves until the switch)", ttl, successor=True)
    return Ownership(False, f"successor of cluster {cluster_id} (host {record.from_host} epoch "
                     f"{record.from_epoch} still owns it)", ttl, successor=True)


def _successor_owner_verdict(raw: str | None, ttl: float, *, cluster_id: int, host_id: str, epoch: int,
                             key: str) -> Ownership:
    """A successor process the assignment names: the owner, exclusive once no record names it."""
    try:
        record = _read_handover(raw, cluster_id, key)
    except RecordError as exc:
        return Ownership(True, f"owner; not exclusive while the handover record is unreadable: {exc}", ttl,
                         exclusive=False)
    if record is not None and record.names(host_id, epoch) and record.resharding:
        return Ownership(True, f"owner since the switch to generation {record.generation}; the retired "
                         "generation's processes may still be stopping", ttl, exclusive=False)
    if record is not None and record.names(host_id, epoch):
        return Ownership(True, f"owner since the switch; host {record.from_host} epoch {record.from_epoch} may "
                         "still be stopping", ttl, exclusive=False)
    return Ownership(True, "owner", ttl)


def _handed_over_verdict(raw: str | None, moved: Ownership, lease_problem: str | None, ttl: float, *,
                         cluster_id: int, host_id: str, epoch: int, granted: tuple[str, int],
                         key: str) -> Ownership:
    """A normal process the assignment no longer names: fenced, unless it was just handed over (switched)."""
    try:
        record = _read_handover(raw, cluster_id, key)
    except RecordError:
        return moved
    if (record is None or record.state is not HandoverState.SWITCHED or record.from_host != host_id
            or record.from_epoch != epoch or (record.host, record.epoch) != granted):
        return moved
    if lease_problem is not None:
        return Ownership(False, lease_problem)
    return Ownership(True, f"cluster {cluster_id} handed over to host {record.host} epoch {record.epoch}; "
                     "serving until stopped", ttl, handed_over=True)


def bound_undecided(verdict: Ownership, since: float | None, now: float,
                    limit: float) -> tuple[Ownership, float | None]:
    """Bound the wait of undecided verdicts: return the verdict to act on and the new start of the wait
    (``None`` once decided). Undecided for longer than ``limit`` seconds becomes a fence."""
    if not verdict.undecided:
        return verdict, None
    since = now if since is None else since
    if now - since > limit:
        return Ownership(False, f"{verdict.reason}; undecided for {now - since:.0f}s, giving up"), since
    return verdict, since


class DispatchVerdict(StrEnum):
    """What to do with one event."""

    DISPATCH = "dispatch"
    HOLD = "hold"
    DROP = "drop"


@dataclass
class DispatchGuard:
    """The dispatch horizon and the events held past it (pure: the caller supplies the clock)."""

    clock: Clock
    margin: float = 0.5
    valid_until: float = -math.inf
    fenced: bool = False
    held: deque[Callable[[], None]] = field(default_factory=deque)
    held_total: int = 0
    dropped_total: int = 0
    #: monotonic send time of the newest check that was applied (older answers arriving late are ignored)
    last_check_sent: float = -math.inf
    _releasing: bool = field(default=False, repr=False)

    def allows(self) -> bool:
        """May an event be dispatched right now? (one monotonic comparison)"""
        return not self.fenced and self.clock.monotonic() < self.valid_until

    def verdict(self) -> DispatchVerdict:
        """Dispatch now, hold (a check is needed), or drop (fenced). Holding also keeps order: while anything
        is held, newer events queue behind it."""
        if self.fenced:
            return DispatchVerdict.DROP
        if self.held or self.clock.monotonic() >= self.valid_until:
            return DispatchVerdict.HOLD
        return DispatchVerdict.DISPATCH

    def hold(self, thunk: Callable[[], None]) -> None:
        """Keep an event (as a call that dispatches it) until the next check decides."""
        self.held.append(thunk)
        self.held_total += 1

    def confirm(self, sent_at: float, ttl: float) -> None:
        """A check sent at monotonic ``sent_at`` found this process the owner for ``ttl`` more seconds."""
        if self.fenced:
            return
        self.last_check_sent = max(self.last_check_sent, sent_at)
        self.valid_until = max(self.valid_until, sent_at + ttl - self.margin)

    def fence(self) -> int:
        """The process lost its shards: drop everything held (return how many) and refuse all events."""
        self.fenced = True
        self.valid_until = -math.inf
        dropped = len(self.held)
        self.dropped_total += dropped
        self.held.clear()
        return dropped

    def take_releasable(self) -> list[Callable[[], None]]:
        """The held events to dispatch now, oldest first (empty while the horizon has passed)."""
        if not self.allows():
            return []
        items = list(self.held)
        self.held.clear()
        return items

    def admit(self, thunk: Callable[[], None]) -> DispatchVerdict:
        """Run ``thunk`` now, hold it, or drop it; return which. While held events are being released,
        events they cause themselves run at once (they belong at that point of the order)."""
        if self._releasing:
            thunk()
            return DispatchVerdict.DISPATCH
        verdict = self.verdict()
        if verdict is DispatchVerdict.DISPATCH:
            thunk()
        elif verdict is DispatchVerdict.HOLD:
            self.hold(thunk)
        else:
            self.dropped_total += 1
        return verdict

    def release(self, on_error: Callable[[BaseException], None] | None = None) -> int:
        """Dispatch the held events in order if the horizon allows; return how many ran.

        An event that raises is reported to ``on_error`` and does not stop the others."""
        items = self.take_releasable()
        self._releasing = True
        try:
            for thunk in items:
                try:
                    thunk()
                except Exception as exc:
                    if on_error is not None:
                        on_error(exc)
        finally:
            self._releasing = False
        return len(items)

    def remaining(self) -> float:
        """Seconds until the horizon (negative when past it)."""
        return self.valid_until - self.clock.monotonic()


def default_margin(lease_ttl: float) -> float:
    """Safety margin subtracted from the lease PTTL: 10 % of the TTL, at most one second."""
    return min(1.0, max(0.0, lease_ttl) * 0.1)
