"""Pure bookkeeping of cluster moves between live hosts (rebalance, drain, shrinking capacity).

A move between two live hosts is: revoke on the old host, wait until it no longer lists the cluster in its
``running`` (or sends ``cluster_stopped`` for the revoked grant's epoch, or is no longer alive), then grant to
the new host. A ``cluster_stopped`` carrying an older epoch (a confirmation of an earlier move, replayed or
late) is ignored and counted in :attr:`Moves.stale_confirmations`. While a move is
pending the cluster counts as still on its old host, so the planner grants it nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from letsfrag.contract.handover import SuccessorReport

from .assignment import HostView

__all__ = ["HostFacts", "Move", "Moves", "pick_drain_move", "planning_views"]


@dataclass(frozen=True, slots=True)
class Move:
    """One cluster on its way from ``source`` to ``target`` (``None``: wherever the planner puts it)."""

    cluster: int
    source: str
    target: str | None
    reason: str
    started: float
    #: epoch of the grant revoked on ``source``: its ``cluster_stopped`` must carry this epoch (or a later one)
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the move and handover decisions need to know about one host (built once per tick)."""

    alive: bool
    #: the host record's ``running``: cluster id -> epoch
    running: Mapping[int, int] = field(default_factory=dict)
    #: the host record's ``successors``: cluster id -> report (:mod:`letsfrag.contract.handover`)
    successors: Mapping[int, SuccessorReport] = field(default_factory=dict)


class Moves:
    """Pending moves; ``timeout`` seconds to wait for the old host's confirmation."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.pending: dict[int, Move] = {}
        self._stopped: set[tuple[int, str]] = set()
        #: ``cluster_stopped`` messages ignored because their epoch was older than the pending move's
        self.stale_confirmations = 0

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, cluster: object) -> bool:
        return cluster in self.pending

    def begin(self, move: Move) -> None:
        """Record a revoke that waits for confirmation."""
        self.pending[move.cluster] = move
        self._stopped.discard((move.cluster, move.source))

    def confirm_stopped(self, cluster: int, host: str, epoch: int | None) -> bool:
        """A ``cluster_stopped`` message: ``host`` says it stopped its run of ``cluster`` at ``epoch``.

        Returns False (and counts it) when a move of that cluster from that host is pending but ``epoch`` is
        missing or older than the move's: that confirmation belongs to an earlier run and must not end this
        move. Confirmations that match no pending move are harmless and return True."""
        move = self.pending.get(cluster)
        if move is None or move.source != host:
            return True
        if epoch is None or epoch < move.epoch:
            self.stale_confirmations += 1
            return False
        self._stopped.add((cluster, host))
        return True

    def clear(self) -> None:
        """Forget everything (a new leadership term re-reads the world)."""
        self.pending.clear()
        self._stopped.clear()

    def settle(self, now: float, hosts: Mapping[str, HostFacts]) -> tuple[list[Move], list[Move]]:
        """Return ``(done, expired)`` and forget both: confirmed moves and moves that waited too long."""
        done: list[Move] = []
        expired: list[Move] = []
        for cluster, move in sorted(self.pending.items()):
            facts = hosts.get(move.source)
            if facts is None or not facts.alive or cluster not in facts.running or (cluster, move.source) in \
                    self._stopped:
                done.append(move)
            elif now - move.started > self.timeout:
                expired.append(move)
        for move in done + expired:
            del self.pending[move.cluster]
            self._stopped.discard((move.cluster, move.source))
        return done, expired


def planning_views(
    capacities: Mapping[str, int],
    alive: Mapping[str, bool],
    frozen: set[str],
    current: Mapping[int, str | None],
) -> dict[str, HostView]:
    """Host views for the planner. A *frozen* host (draining or leaving) keeps what it holds but gets nothing
    new: its capacity counts as what it holds, so the planner neither adds to it nor revokes from it at once
    (its clusters leave one move at a time)."""
    held: dict[str, int] = {}
    for host in current.values():
        if host is not None:
            held[host] = held.get(host, 0) + 1
    views: dict[str, HostView] = {}
    for host, capacity in capacities.items():
        cap = min(capacity, held.get(host, 0)) if host in frozen else capacity
        views[host] = HostView(host, cap, alive=alive.get(host, False))
    return views


def pick_drain_move(
    draining: Sequence[str],
    capacities: Mapping[str, int],
    eligible: set[str],
    current: Mapping[int, str | None],
) -> tuple[int, str, str] | None:
    """One move ``(cluster, from, to)`` out of a draining host, to the eligible host with the lowest load
    ratio that has room; ``None`` when no draining host holds anything or no host has room."""
    load: dict[str, int] = dict.fromkeys(capacities, 0)
    for host in current.values():
        if host is not None and host in load:
            load[host] += 1
    targets = sorted(
        (Fraction(load[h], capacities[h]), h) for h in eligible
        if h not in draining and capacities.get(h, 0) > load.get(h, 0)
    )
    if not targets:
        return None
    for source in sorted(draining):
        clusters = sorted(c for c, h in current.items() if h == source)
        if clusters:
            return clusters[-1], source, targets[0][1]
    return None
