"""Pure decisions about shards, clusters and hosts: the layout and who runs what.

Nothing here does I/O or reads the clock; the same inputs always give the same answer, so the broker (and any
standby taking over) reaches the same plan. Load is compared as exact fractions (``clusters / capacity``) so
ties never depend on floating-point rounding.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise

from ..contract.records import LayoutRecord
from ..units import format_shard_range

__all__ = [
    "ClusterSpec",
    "HostView",
    "Plan",
    "cluster_of_shard",
    "cluster_specs",
    "compute_layout",
    "is_balanced",
    "plan_assignment",
    "plan_rebalance_step",
    "round_shard_count",
    "shard_of_guild",
]


# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class ClusterSpec:
    """One cluster: a fixed, contiguous block of shards that moves between hosts as a unit."""

    id: int
    shard_ids: tuple[int, ...]

    @property
    def shard_range(self) -> str:
        """``"24–31"`` (en dash), one id for a single shard, ``""`` without shards."""
        return format_shard_range(self.shard_ids)


def _require_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, found {value!r}")


def compute_layout(shard_count: int, shards_per_cluster: int) -> list[ClusterSpec]:
    """Split ``shard_count`` shards into contiguous clusters of ``shards_per_cluster``; the last may be shorter."""
    _require_positive("shard_count", shard_count)
    _require_positive("shards_per_cluster", shards_per_cluster)
    return cluster_specs(LayoutRecord.of_geometry(shard_count, shards_per_cluster))


def cluster_specs(layout: LayoutRecord) -> list[ClusterSpec]:
    """Every cluster of ``layout`` with its shards (:meth:`LayoutRecord.shards_of`), by id."""
    return [ClusterSpec(id=cid, shard_ids=layout.shards_of(cid)) for cid in layout.cluster_ids]


def round_shard_count(recommended: int, max_concurrency: int) -> int:
    """Round Discord's recommended shard count up to a multiple of ``max_concurrency`` (when it is above 1).

    Large bots must use a multiple of their ``max_concurrency``; for everyone else it keeps identify buckets
    evenly filled.
    """
    _require_positive("recommended shard count", recommended)
    _require_positive("max_concurrency", max_concurrency)
    if max_concurrency == 1:
        return recommended
    return -(-recommended // max_concurrency) * max_concurrency


def cluster_of_shard(shard_id: int, shards_per_cluster: int) -> int:
    """The id of the cluster that runs ``shard_id``."""
    _require_positive("shards_per_cluster", shards_per_cluster)
    if shard_id < 0:
        raise ValueError(f"shard_id cannot be negative, found {shard_id!r}")
    return shard_id // shards_per_cluster


def shard_of_guild(guild_id: int, shard_count: int) -> int:
    """The shard Discord routes ``guild_id`` to: ``(guild_id >> 22) % shard_count``."""
    _require_positive("shard_count", shard_count)
    return (guild_id >> 22) % shard_count


# --------------------------------------------------------------------------------------------- hosts


@dataclass(frozen=True)
class HostView:
    """What the planner needs to know about one host."""

    id: str
    capacity: int
    alive: bool = True
    draining: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) or self.capacity < 0:
            raise ValueError(f"host {self.id!r}: capacity must be an integer >= 0, found {self.capacity!r}")

    @property
    def eligible(self) -> bool:
        """True when the host may receive clusters: alive, not draining and with a capacity above 0."""
        return self.alive and not self.draining and self.capacity > 0


@dataclass(frozen=True)
class Plan:
    """The outcome of :func:`plan_assignment`.

    ``revoked`` may also name clusters that are no longer part of the layout (the shard count shrank): their
    host must stop them, and they do not appear in ``assignment``. ``reasons`` says why each one was revoked.
    """

    assignment: dict[int, str | None]
    granted: dict[int, str]
    revoked: dict[int, str]
    unassigned: list[int]
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """True when executing this plan grants or revokes anything."""
        return bool(self.granted or self.revoked)


_DIGITS = re.compile(r"(\d+)")
_HostKey = tuple[tuple[tuple[int, int | str], ...], str]


def _host_key(host_id: str) -> _HostKey:
    """Order hosts naturally (``host-2`` before ``host-10``), with the raw id as the final tie-break."""
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in _DIGITS.split(host_id) if p)
    return parts, host_id


def _check_inputs(cluster_ids: Sequence[int], hosts: Mapping[str, HostView]) -> list[int]:
    ordered = sorted(cluster_ids)
    for before, after in pairwise(ordered):
        if before == after:
            raise ValueError(f"cluster id {before} appears more than once in the layout")
    for key, host in hosts.items():
        if key != host.id:
            raise ValueError(f"hosts mapping key {key!r} does not match its HostView id {host.id!r}")
    return ordered


def _revoke_reason(host_id: str, hosts: Mapping[str, HostView]) -> str | None:
    host = hosts.get(host_id)
    if host is None:
        return "unknown host"
    if not host.alive:
        return "host dead"
    if host.draining:
        return "host draining"
    return None


def _fill_counts(free: int, hosts: Iterable[HostView], load: Mapping[str, int]) -> dict[str, int]:
    """How many free clusters each host receives: one at a time to the lowest load ratio, ties by host id."""
    heap = [
        (Fraction(load[h.id], h.capacity), _host_key(h.id), h.id)
        for h in hosts
        if h.eligible and load[h.id] < h.capacity
    ]
    heapq.heapify(heap)
    extra: dict[str, int] = {}
    capacity = {h.id: h.capacity for h in hosts}
    while free > 0 and heap:
        _, key, host_id = heapq.heappop(heap)
        extra[host_id] = extra.get(host_id, 0) + 1
        free -= 1
        count = load[host_id] + extra[host_id]
        if count < capacity[host_id]:
            heapq.heappush(heap, (Fraction(count, capacity[host_id]), key, host_id))
    return extra


def plan_assignment(
    cluster_ids: Sequence[int], hosts: Mapping[str, HostView], current: Mapping[int, str | None]
) -> Plan:
    """Decide which host runs each cluster, moving as little as possible.

    * a cluster on a dead, draining or unknown host is revoked;
    * a healthy host keeps what it runs (sticky) up to its capacity: beyond it, the lowest cluster ids stay
      and the rest are revoked;
    * free clusters go, one at a time, to the eligible host with the lowest load ratio (ties by host id);
      the clusters themselves are handed out as contiguous runs in host order, so a placement from nothing
      gives host ``a`` clusters 0–3 and host ``b`` 4–7, proportional to capacity;
    * what does not fit stays unassigned.
    """
    ordered = _check_inputs(cluster_ids, hosts)
    in_layout = set(ordered)
    revoked: dict[int, str] = {}
    reasons: dict[int, str] = {}
    kept: dict[str, list[int]] = {host_id: [] for host_id in hosts}

    for cluster_id in sorted(current):
        host_id = current[cluster_id]
        if host_id is None:
            continue
        if cluster_id not in in_layout:
            revoked[cluster_id], reasons[cluster_id] = host_id, "not in layout"
            continue
        reason = _revoke_reason(host_id, hosts)
        if reason is not None:
            revoked[cluster_id], reasons[cluster_id] = host_id, reason
        else:
            kept[host_id].append(cluster_id)

    for host_id, clusters in kept.items():
        capacity = hosts[host_id].capacity
        for cluster_id in clusters[capacity:]:
            revoked[cluster_id], reasons[cluster_id] = host_id, "over capacity"
        del clusters[capacity:]

    assignment: dict[int, str | None] = dict.fromkeys(ordered)
    for host_id, clusters in kept.items():
        for cluster_id in clusters:
            assignment[cluster_id] = host_id

    free = [cluster_id for cluster_id in ordered if assignment[cluster_id] is None]
    extra = _fill_counts(len(free), hosts.values(), {h: len(c) for h, c in kept.items()})
    granted: dict[int, str] = {}
    position = 0
    for host_id in sorted(extra, key=_host_key):
        for cluster_id in free[position : position + extra[host_id]]:
            assignment[cluster_id] = host_id
            granted[cluster_id] = host_id
        position += extra[host_id]

    return Plan(
        assignment=assignment,
        granted=dict(sorted(granted.items())),
        revoked=dict(sorted(revoked.items())),
        unassigned=free[position:],
        reasons=dict(sorted(reasons.items())),
    )


# --------------------------------------------------------------------------------------------- rebalance


def _pick_cluster(source: list[int], target: set[int]) -> int:
    """Which of ``source``'s clusters to move: one next to the target's clusters, else the highest id."""
    adjacent = [c for c in source if c - 1 in target or c + 1 in target]
    return min(adjacent) if adjacent else max(source)


def plan_rebalance_step(
    cluster_ids: Sequence[int], hosts: Mapping[str, HostView], current: Mapping[int, str | None]
) -> tuple[int, str, str] | None:
    """Return one move ``(cluster, from_host, to_host)`` that makes the load fairer, or ``None``.

    Only meaningful once ``current`` is settled (:func:`plan_assignment` would change nothing); otherwise
    ``None``: execute the plan first. A move is proposed only if it strictly narrows the gap between the load
    ratios of the two hosts involved (equivalently: strictly lowers ``sum(clusters² / capacity)``, so repeated
    steps always end). Among such moves the one that narrows most wins (usually most loaded → least loaded),
    ties by host id. The broker moves one cluster at a time: stop it on the old host, confirm, grant it to the
    new one, then ask again.
    """
    if plan_assignment(cluster_ids, hosts, current).changed:
        return None
    held: dict[str, list[int]] = {host_id: [] for host_id, host in hosts.items() if host.eligible}
    for cluster_id in sorted(cluster_ids):
        host_id = current.get(cluster_id)
        if host_id is not None:
            held[host_id].append(cluster_id)

    # gain(source, target) = (2a - 1)/ca - (2b + 1)/cb: the source's push minus the target's pull, so the
    # check is O(hosts) when nothing can improve (the steady state), instead of comparing every pair
    push = {h: Fraction(2 * len(c) - 1, hosts[h].capacity) for h, c in held.items() if c}
    pull = {h: Fraction(2 * len(c) + 1, hosts[h].capacity) for h, c in held.items() if len(c) < hosts[h].capacity}
    if not push or not pull or max(push.values()) <= min(pull.values()):
        return None
    # a best pair has its source among the two highest pushes and its target among the two lowest pulls (with
    # multiplicity): otherwise a pair avoiding the one excluded host would gain strictly more
    push_floor = sorted(push.values(), reverse=True)[:2][-1]
    pull_ceiling = sorted(pull.values())[:2][-1]
    best: tuple[Fraction, tuple[_HostKey, _HostKey], str, str] | None = None
    for source in (h for h, p in push.items() if p >= push_floor):
        for target in (h for h, p in pull.items() if p <= pull_ceiling):
            if target == source or push[source] <= pull[target]:
                continue
            gain = push[source] - pull[target]
            order = (_host_key(source), _host_key(target))
            if best is None or gain > best[0] or (gain == best[0] and order < best[1]):
                best = (gain, order, source, target)
    if best is None:
        return None
    _, _, source, target = best
    return _pick_cluster(held[source], set(held[target])), source, target


def is_balanced(cluster_ids: Sequence[int], hosts: Mapping[str, HostView], current: Mapping[int, str | None]) -> bool:
    """True when the plan changes nothing and no rebalance step is left."""
    if plan_assignment(cluster_ids, hosts, current).changed:
        return False
    return plan_rebalance_step(cluster_ids, hosts, current) is None
