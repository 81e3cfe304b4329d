"""The plan of a reshard (generation g → g+1), or the one sentence why not: pure, no I/O, no clock.

The leader broker calls :func:`plan_reshard` with what it reads every tick (the layout, the hosts, the identify
budget) and the operator's target (``letsfrag reshard --shards N`` or ``--recommended``, the shard count
``/gateway/bot`` recommends). The answer is a :class:`ReshardPlan` or a :class:`ReshardRefusal`; the same inputs
always give the same answer.

* **Shard count**: rounded up to a multiple of ``max_concurrency`` (Discord requires it of large bots and closes
  with 4010 otherwise); the plan says so in a sentence when it rounded. Refused: below 1, above
  :data:`~letsfrag.contract.records.MAX_SHARDS`, or equal to the current count.
* **Clusters** of the new generation keep ``shards_per_cluster``: ``ceil(N / shards_per_cluster)`` of them.
* **Capacity during the overlap**: the new generation's processes run *beside* the old ones until the switch, so
  each counts against its host's ``capacity`` as much as an old one does: a host has
  ``capacity − clusters it holds now`` free slots for the new generation (the handover's ``capacity + 1`` slot is
  for one handover and is not used). New clusters go to live hosts that are not draining, one at a time to the
  host with the lowest ``(held + new) / capacity`` (ties: the host id). Refused when the free slots are fewer
  than the new clusters.
* **Identify budget**: every new shard IDENTIFYs once, so the reshard needs ``N`` session starts; refused when
  ``remaining − reserve < N`` (``reserve = ceil(total × identify_reserve)``, as for a handover). An unknown budget
  (no ``{ns}:identify:budget``) is not checked, and the plan says so.
* **Time**: the new sessions identify through the global queue by buckets, ``max_concurrency`` per
  ``identify_window``: at least ``ceil(N / max_concurrency) × identify_window`` seconds.

Executing the plan (:mod:`letsfrag.contract.reshard` is the protocol): :func:`new_layout` is the generation the plan
prepares, :func:`place` gives each new cluster its host, and every tick :func:`decide_reshard` says what to do
with the reshard record at ``now`` (Redis ``TIME``, the records' clock):

* **preparing** → ``switch`` when every new cluster's host reports its process of that epoch ``ready``;
  ``rollback`` (naming the cluster) when a host is not alive, a report says ``failed``, or the deadline passed;
* **switched** → ``done`` once no live host runs an old cluster for ``settle`` seconds (their last status writes
  landed), or when the stop deadline passed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from letsfrag.contract.handover import SuccessorState
from letsfrag.contract.records import MAX_SHARDS, LayoutRecord
from letsfrag.contract.reshard import ReshardRecord, ReshardState

from .assignment import round_shard_count
from .handovers import HandoverAction, reserve_of
from .moves import HostFacts

__all__ = ["BudgetView", "CurrentLayout", "HostRoom", "ReshardAction", "ReshardPlan", "ReshardRefusal", "ReshardStep",
           "auto_reshard_reason", "decide_reshard", "new_layout", "old_running", "place", "plan_reshard",
           "ready_clusters", "sharding_target"]


@dataclass(frozen=True, slots=True)
class CurrentLayout:
    """The live generation's layout."""

    generation: int
    shard_count: int
    shards_per_cluster: int
    max_concurrency: int
    identify_window: float


@dataclass(frozen=True, slots=True)
class HostRoom:
    """One host as the plan sees it: its capacity and how many clusters it holds now."""

    capacity: int
    held: int
    alive: bool = True
    draining: bool = False
    #: its supervisor takes part in handovers (it can start a new generation's clusters gated); an older one
    #: receives none
    handovers: bool = True


@dataclass(frozen=True, slots=True)
class BudgetView:
    """Discord's session-start budget (``total``/``remaining`` ``None``: unknown) and the reserve kept back."""

    total: int | None
    remaining: int | None
    reserve_fraction: float

    @property
    def known(self) -> bool:
        """Both numbers were read from ``{ns}:identify:budget``."""
        return self.total is not None and self.remaining is not None


@dataclass(frozen=True, slots=True)
class ReshardRefusal:
    """Why there is no plan: one sentence naming the numbers."""

    message: str

    def to_dict(self) -> dict[str, Any]:
        """The command reply."""
        return {"ok": False, "refused": True, "message": self.message}


@dataclass(frozen=True, slots=True)
class ReshardPlan:
    """Generation ``generation`` → ``generation + 1``: what it takes and where the new clusters run."""

    generation: int
    old_shards: int
    new_shards: int
    requested: int
    shards_per_cluster: int
    max_concurrency: int
    identify_window: float
    clusters: int
    #: host -> new clusters it receives (hosts receiving none are left out)
    hosts: Mapping[str, int] = field(default_factory=dict)
    #: host -> free slots it had for the new generation (live, not draining hosts)
    free: Mapping[str, int] = field(default_factory=dict)
    identifies: int = 0
    budget_remaining: int | None = None
    budget_reserve: int | None = None
    #: how the target was chosen, e.g. "--shards 13" or "--recommended (13 from /gateway/bot)"
    source: str = ""

    @property
    def new_generation(self) -> int:
        """The generation the reshard prepares."""
        return self.generation + 1

    @property
    def rounded(self) -> str | None:
        """The sentence saying the count was rounded (``None``: used as requested)."""
        if self.new_shards == self.requested:
            return None
        return (f"{self.requested} shards rounded up to {self.new_shards}, a multiple of max_concurrency "
                f"{self.max_concurrency} (Discord requires it)")

    @property
    def estimated_seconds(self) -> float:
        """The physical limit of the new sessions' IDENTIFYs: ``ceil(N / max_concurrency) × identify_window``."""
        return math.ceil(self.new_shards / self.max_concurrency) * self.identify_window

    def lines(self) -> list[str]:
        """The plan as the CLI prints it, one line each."""
        g, n = self.generation, self.new_generation
        out = [f"reshard plan: generation {g} -> {n}" + (f" ({self.source})" if self.source else "")]
        out.append(f"  shards: {self.old_shards} -> {self.new_shards}")
        if self.rounded:
            out.append(f"  note: {self.rounded}")
        out.append(f"  clusters of generation {n}: {self.clusters} ({self.shards_per_cluster} shards per cluster)")
        out.append(f"  capacity during the overlap: generation {n}'s processes run beside generation {g}'s until "
                   "the switch; each counts against its host's capacity")
        for host in sorted(self.free):
            out.append(f"    {host}: {self.hosts.get(host, 0)} new cluster(s) in {self.free[host]} free slot(s)")
        if self.budget_remaining is None or self.budget_reserve is None:
            out.append(f"  identifies: {self.identifies} needed; the identify budget is unknown (not checked)")
        else:
            left = self.budget_remaining - self.budget_reserve
            out.append(f"  identifies: {self.identifies} needed of {self.budget_remaining} remaining "
                       f"({self.budget_reserve} reserve, {left - self.identifies} left after)")
        buckets = math.ceil(self.new_shards / self.max_concurrency)
        out.append(f"  estimated time: {self.estimated_seconds:g}s (ceil({self.new_shards} / {self.max_concurrency})"
                   f" = {buckets} x identify_window {self.identify_window:g}s)")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The command reply (JSON); ``lines`` is what the CLI prints."""
        return {"ok": True, "refused": False, "generation": self.generation, "new_generation": self.new_generation,
                "old_shards": self.old_shards, "new_shards": self.new_shards, "requested": self.requested,
                "rounded": self.rounded, "clusters": self.clusters, "hosts": dict(sorted(self.hosts.items())),
                "free": dict(sorted(self.free.items())), "identifies": self.identifies,
                "budget_remaining": self.budget_remaining, "budget_reserve": self.budget_reserve,
                "estimated_seconds": self.estimated_seconds, "lines": self.lines(),
                "message": f"generation {self.generation} -> {self.new_generation}: {self.old_shards} -> "
                           f"{self.new_shards} shards"}


def _distribute(clusters: int, free: Mapping[str, int], rooms: Mapping[str, HostRoom]) -> dict[str, int]:
    """``clusters`` new clusters onto the hosts with free slots, each to the least loaded (by held + new over
    capacity, exact fractions), ties by host id."""
    given = dict.fromkeys(free, 0)
    for _ in range(clusters):
        open_hosts: Sequence[str] = [h for h in sorted(free) if given[h] < free[h]]
        host = min(open_hosts, key=lambda h: (Fraction(rooms[h].held + given[h], rooms[h].capacity), h))
        given[host] += 1
    return {h: n for h, n in given.items() if n}


def plan_reshard(layout: CurrentLayout, hosts: Mapping[str, HostRoom], budget: BudgetView, *,
                 shards: int | None = None, recommended: int | None = None,
                 use_recommended: bool = False) -> ReshardPlan | ReshardRefusal:
    """The plan of resharding ``layout`` to ``shards`` (or, ``use_recommended``, to ``recommended``: ``None`` when
    the broker has no ``/gateway/bot`` answer), or why not."""
    if use_recommended:
        if recommended is None:
            return ReshardRefusal("the recommended shard count is unknown: the broker has no /gateway/bot answer "
                                  "(it needs a bot token); give --shards N")
        requested, source = recommended, f"--recommended: {recommended} from /gateway/bot"
    elif shards is None:
        return ReshardRefusal("no target: give --shards N or --recommended")
    else:
        requested, source = shards, f"--shards {shards}"
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        return ReshardRefusal(f"the shard count must be at least 1, found {requested!r}")
    if requested > MAX_SHARDS:
        return ReshardRefusal(f"the shard count {requested} is too large: at most {MAX_SHARDS}")
    new = round_shard_count(requested, layout.max_concurrency)
    if new > MAX_SHARDS:
        return ReshardRefusal(f"the shard count {requested} rounds up to {new} (a multiple of max_concurrency "
                              f"{layout.max_concurrency}), more than the largest, {MAX_SHARDS}")
    if new == layout.shard_count:
        same = "" if new == requested else f" ({requested} rounded up to a multiple of {layout.max_concurrency})"
        return ReshardRefusal(f"generation {layout.generation} already has {new} shards{same}: nothing to reshard")
    clusters = math.ceil(new / layout.shards_per_cluster)
    usable = {h: r for h, r in hosts.items() if r.alive and not r.draining and r.capacity > 0 and r.handovers}
    free = {h: max(0, r.capacity - r.held) for h, r in usable.items()}
    room = sum(free.values())
    if room < clusters:
        each = ", ".join(f"{h}: {free[h]} of capacity {usable[h].capacity} free" for h in sorted(free)) or \
            "no live host"
        older = sorted(h for h, r in hosts.items() if r.alive and not r.handovers)
        if older:
            each += f"; {', '.join(older)} cannot start them gated (an older supervisor without handovers)"
        return ReshardRefusal(
            f"no room for generation {layout.generation + 1}: its {clusters} cluster(s) run beside generation "
            f"{layout.generation}'s during the overlap and need {clusters} free slot(s), the live hosts have "
            f"{room} ({each})")
    reserve: int | None = None
    if budget.known:
        assert budget.total is not None and budget.remaining is not None
        reserve = reserve_of(budget.total, budget.reserve_fraction)
        if budget.remaining - reserve < new:
            return ReshardRefusal(
                f"the identify budget cannot pay a reshard to {new} shards: {budget.remaining} session starts "
                f"remain, {reserve} are the reserve, and the {new} new sessions need {new}")
    return ReshardPlan(
        generation=layout.generation, old_shards=layout.shard_count, new_shards=new, requested=requested,
        shards_per_cluster=layout.shards_per_cluster, max_concurrency=layout.max_concurrency,
        identify_window=layout.identify_window, clusters=clusters, hosts=_distribute(clusters, free, usable),
        free=free, identifies=new, budget_remaining=budget.remaining if budget.known else None,
        budget_reserve=reserve, source=source)


def new_layout(live: LayoutRecord, plan: ReshardPlan) -> LayoutRecord:
    """The layout of the generation ``plan`` prepares: its shard count, its clusters numbered after ``live``'s,
    the live timing fields."""
    return dataclasses.replace(live, generation=live.generation + 1, shard_count=plan.new_shards,
                               cluster_count=plan.clusters, cluster_base=live.next_cluster_base, updated_at=None)


def place(layout: LayoutRecord, plan: ReshardPlan) -> dict[int, str]:
    """Each new cluster's host: ``plan.hosts``'s counts handed out in cluster order, hosts alternating (so each
    host's clusters spread over the shard range)."""
    left = dict(sorted(plan.hosts.items()))
    out: dict[int, str] = {}
    hosts = list(left)
    turn = 0
    for cid in layout.cluster_ids:
        while left[hosts[turn % len(hosts)]] == 0:
            turn += 1
        host = hosts[turn % len(hosts)]
        left[host] -= 1
        out[cid] = host
        turn += 1
    return out


#: what the broker does with the reshard record this tick: the four decisions of a handover record
ReshardAction = HandoverAction


@dataclass(frozen=True, slots=True)
class ReshardStep:
    """The decision; ``reason`` is a sentence for events and the command's reply, ``cluster`` the one to blame."""

    action: ReshardAction
    reason: str = ""
    cluster: int | None = None


def ready_clusters(record: ReshardRecord, hosts: Mapping[str, HostFacts]) -> list[int]:
    """The new clusters whose host reports their process (of the record's epoch) ready."""
    out = []
    for cid, grant in sorted(record.clusters.items()):
        facts = hosts.get(grant.host)
        report = facts.successors.get(cid) if facts is not None else None
        if report is not None and report.epoch == grant.epoch and report.state is SuccessorState.READY:
            out.append(cid)
    return out


def old_running(record: ReshardRecord, hosts: Mapping[str, HostFacts]) -> list[int]:
    """The old clusters some live host still runs."""
    retiring = set(record.retiring)
    return sorted({cid for facts in hosts.values() if facts.alive for cid in facts.running if cid in retiring})


def decide_reshard(record: ReshardRecord, now: float, hosts: Mapping[str, HostFacts], *,
                   stopped_since: float | None = None, settle: float = 0.0) -> ReshardStep:
    """The next step of ``record`` at ``now``; ``stopped_since``: since when no live host runs an old cluster
    (``None``: one still does)."""
    g, n = record.from_generation, record.generation
    if record.state is ReshardState.PREPARING:
        for cid, grant in sorted(record.clusters.items()):
            facts = hosts.get(grant.host)
            if facts is None or not facts.alive:
                return ReshardStep(ReshardAction.ROLLBACK, f"cluster {cid} of generation {n}: its host {grant.host} "
                                   "is not alive", cid)
            report = facts.successors.get(cid)
            if report is not None and report.epoch == grant.epoch and report.state is SuccessorState.FAILED:
                why = f": {report.reason}" if report.reason else ""
                return ReshardStep(ReshardAction.ROLLBACK, f"cluster {cid} of generation {n} failed on {grant.host}"
                                   f"{why}", cid)
        ready = ready_clusters(record, hosts)
        if len(ready) == len(record.clusters):
            return ReshardStep(ReshardAction.SWITCH, f"all {len(ready)} cluster(s) of generation {n} are ready")
        if now > record.deadline:
            late = [c for c in sorted(record.clusters) if c not in ready]
            return ReshardStep(ReshardAction.ROLLBACK, f"cluster {late[0]} of generation {n} was not ready within "
                               f"{record.deadline - record.started:.0f}s" +
                               (f" (nor {late[1:]})" if len(late) > 1 else ""), late[0])
        return ReshardStep(ReshardAction.WAIT)
    if stopped_since is not None and now - stopped_since >= settle:
        return ReshardStep(ReshardAction.DONE, f"generation {g}'s processes stopped")
    if now > record.deadline:
        return ReshardStep(ReshardAction.DONE, f"generation {g}'s processes did not all confirm the stop in time")
    return ReshardStep(ReshardAction.WAIT)


def sharding_target(shard_count: int, max_concurrency: int, recommended: int | None) -> int:
    """The shard count to reshard to after a 4011 ("sharding required"): the ``/gateway/bot`` recommendation when it
    is more than ``shard_count``, else twice ``shard_count`` (each shard ``i`` splits into ``i`` and ``i + N``),
    rounded up to a multiple of ``max_concurrency``."""
    target = recommended if recommended is not None and recommended > shard_count else 2 * shard_count
    return round_shard_count(target, max_concurrency)


def auto_reshard_reason(guilds: Mapping[int, int], threshold: int) -> str | None:
    """Why an automatic reshard is due (``reshard.auto``): the fullest shard holds more than ``threshold`` guilds,
    as the clusters report per shard (``guilds``: shard id -> guild count); ``None``: not due."""
    over = {shard: n for shard, n in guilds.items() if n > threshold}
    if not over:
        return None
    shard = max(over, key=lambda s: (over[s], -s))
    more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
    return f"shard {shard} holds {over[shard]} guilds, more than reshard.max_guilds_per_shard {threshold}{more}"
