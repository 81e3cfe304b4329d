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

import json
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from ..clock import Clock
from ..errors import RecordError
from ..records import MAX_SHARDS, parse_int

#: the ``{ns}:layout`` fields an ownership check reads
LAYOUT_FIELDS = ("shard_count", "shards_per_cluster", "adopting")


@dataclass(frozen=True, slots=True)
class Ownership:
    """The verdict of one ownership check; ``ttl`` is how long it stays valid (seconds)."""

    owner: bool
    reason: str
    ttl: float = 0.0
    #: neither owner nor fenced yet: hold events and check again (see the module docs)
    undecided: bool = False


def _layout_verdict(layout: Mapping[str, str | None], cluster_id: int, shard_ids: tuple[int, ...] | None,
                    key: str) -> Ownership | None:
    """An undecided verdict when the layout's shard range for ``cluster_id`` is not ``shard_ids`` (or unreadable)."""
    if shard_ids is None:
        return None
    try:
        count = parse_int(layout.get("shard_count"), key=key, field="shard_count", minimum=1, maximum=MAX_SHARDS)
        per = parse_int(layout.get("shards_per_cluster"), key=key, field="shards_per_cluster", minimum=1,
                        maximum=MAX_SHARDS)
    except RecordError as exc:
        return Ownership(False, f"cannot check cluster {cluster_id}'s shards: {exc}", undecided=True)
    start = cluster_id * per
    expected = tuple(range(start, min(start + per, count)))
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
) -> Ownership:
    """Judge the raw Redis readings (assignment field, lease value, lease PTTL in ms).

    ``layout`` holds the :data:`LAYOUT_FIELDS` of ``{ns}:layout`` (``None``: not read); with ``shard_ids``
    (what this process runs) each shard is checked against the layout, not only the cluster id.
    """
    if layout is not None:
        gone = all(layout.get(name) is None for name in LAYOUT_FIELDS)
        if (gone or layout.get("adopting")) and (assignment is None or lease_value is None):
            what = "is gone" if gone else "says the broker is adopting running clusters"
            return Ownership(False, f"{layout_key} {what} (Redis lost its data?): holding events until the broker "
                             f"adopts cluster {cluster_id}", undecided=True)
        if not gone:
            mismatch = _layout_verdict(layout, cluster_id, shard_ids, layout_key)
            if mismatch is not None:
                return mismatch
    if assignment is None:
        return Ownership(False, f"cluster {cluster_id} is no longer assigned to any host")
    try:
        grant = json.loads(assignment)
        granted_host, granted_epoch = str(grant["host"]), int(grant["epoch"])
    except (ValueError, TypeError, KeyError):
        return Ownership(False, f"cluster {cluster_id}'s assignment is unreadable: {assignment[:80]!r}")
    if granted_host != host_id or granted_epoch != epoch:
        return Ownership(
            False,
            f"cluster {cluster_id} now belongs to host {granted_host} epoch {granted_epoch} "
            f"(this process runs host {host_id} epoch {epoch})",
        )
    if lease_value is None or lease_pttl_ms == -2:
        return Ownership(False, f"host {host_id}'s lease has expired")
    if lease_value != incarnation:
        return Ownership(False, f"host {host_id}'s lease belongs to another incarnation of the host")
    ttl = default_ttl if lease_pttl_ms < 0 else lease_pttl_ms / 1000.0
    return Ownership(True, "owner", ttl)


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


class Verdict(StrEnum):
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

    def verdict(self) -> Verdict:
        """Dispatch now, hold (a check is needed), or drop (fenced). Holding also keeps order: while anything
        is held, newer events queue behind it."""
        if self.fenced:
            return Verdict.DROP
        if self.held or self.clock.monotonic() >= self.valid_until:
            return Verdict.HOLD
        return Verdict.DISPATCH

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

    def admit(self, thunk: Callable[[], None]) -> Verdict:
        """Run ``thunk`` now, hold it, or drop it; return which. While held events are being released,
        events they cause themselves run at once (they belong at that point of the order)."""
        if self._releasing:
            thunk()
            return Verdict.DISPATCH
        verdict = self.verdict()
        if verdict is Verdict.DISPATCH:
            thunk()
        elif verdict is Verdict.HOLD:
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
