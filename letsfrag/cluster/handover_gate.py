"""The gate of a handover successor (pure; the caller supplies the clock and does the I/O).

A successor process (``LETSFRAG_HANDOVER=1``, see :mod:`letsfrag.contract.handover`) runs beside the current owner until
the switch. Its :class:`HandoverGate` goes through three phases, driven by the ownership verdicts
(:mod:`.guard`) the process observes:

=============  ==========================================================================================
``successor``  before the switch: a claimable parse is *kept* unparsed, in arrival order (per shard and
               overall), at most ``limit`` of them (more are counted in ``overflowed``); every other parse
               runs (the cache fills) but no user handler is dispatched
``owner``      the assignment names this process, a handover record still names it: the kept events go
               through the claims (an event the old process handled loses its claim), new claimable events
               too; user dispatch of *other* events waits, the old process may still dispatch them
``exclusive``  no record names it any more: everything is dispatched (the lifecycle events suppressed
               before, such as ``ready``, are dispatched once then)
=============  ==========================================================================================

A normal process has the phase ``off``: nothing is gated. Once a check finds it handed over (the old process after
the switch, :attr:`~.guard.Ownership.handed_over`; an ``exclusive`` successor too, when a later handover or reshard
moves or retires its cluster) its phase is ``handed_over``: it still dispatches everything
(its claims keep events single) but writes nothing the owner writes (shard status, session records, errors).
While in ``successor`` or ``owner`` the process checks ownership every ``check_interval`` seconds
(:meth:`HandoverGate.next_check`) and at once on IPC ``promote``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..clock import Clock
from .guard import Ownership

#: claimable events a successor keeps at most (per process) before the switch
DEFAULT_KEEP_LIMIT = 20_000
#: seconds between ownership checks of a successor (and of an owner that is not exclusive yet)
DEFAULT_CHECK_INTERVAL = 0.2
#: discord.py events suppressed in a successor and dispatched once when it becomes exclusive (latest args kept)
LIFECYCLE_EVENTS = frozenset({"connect", "shard_connect", "ready", "shard_ready"})


class GatePhase(StrEnum):
    """Where a process stands in a handover (``off``: a normal process)."""

    OFF = "off"
    HANDED_OVER = "handed_over"
    SUCCESSOR = "successor"
    OWNER = "owner"
    EXCLUSIVE = "exclusive"


@dataclass(frozen=True, slots=True)
class KeptEvent:
    """A claimable parse kept by the gate: its shard (lane), claim identity and the parse itself."""

    lane: Any
    identity: str
    parse: Callable[[], None]


class HandoverGate:
    """Keeps a successor's claimable events and decides which dispatches run (see the module docs)."""

    def __init__(self, clock: Clock, *, successor: bool, limit: int = DEFAULT_KEEP_LIMIT,
                 check_interval: float = DEFAULT_CHECK_INTERVAL) -> None:
        self.clock = clock
        self.phase = GatePhase.SUCCESSOR if successor else GatePhase.OFF
        self.limit = limit
        self.check_interval = check_interval
        self.kept: deque[KeptEvent] = deque()
        #: claimable events not kept because ``limit`` was reached (lost to this process)
        self.overflowed = 0
        #: kept events released to the claims at the switch
        self.released = 0
        #: kept events dropped because the process was fenced (a rollback)
        self.dropped = 0
        #: user dispatches suppressed so far
        self.suppressed = 0
        self._lifecycle: dict[tuple[str, tuple[Any, ...]], None] = {}
        self._last_check = -math.inf

    # --- what runs ------------------------------------------------------------------------------------------
    @property
    def keeps(self) -> bool:
        """Claimable parses are kept (the phase is ``successor``)."""
        return self.phase is GatePhase.SUCCESSOR

    @property
    def writes_allowed(self) -> bool:
        """May the process write what an owner writes (shard status, session records, errors)?"""
        return self.phase not in (GatePhase.SUCCESSOR, GatePhase.HANDED_OVER)

    @property
    def exclusive(self) -> bool:
        """Everything is dispatched (a normal process, handed over or not, or a successor once no record names
        it)."""
        return self.phase in (GatePhase.OFF, GatePhase.HANDED_OVER, GatePhase.EXCLUSIVE)

    def keep(self, lane: Any, identity: str, parse: Callable[[], None]) -> bool:
        """Keep a claimable parse; False when the gate is full (counted in ``overflowed``)."""
        if len(self.kept) >= self.limit:
            self.overflowed += 1
            return False
        self.kept.append(KeptEvent(lane, identity, parse))
        return True

    def allows_dispatch(self, event: str, args: tuple[Any, ...], *, claimed: bool) -> bool:
        """May a user dispatch of ``event`` run now? ``claimed``: it comes from the parse of a won claim.
        A suppressed lifecycle event is remembered for :meth:`take_lifecycle`."""
        if self.exclusive or (claimed and self.phase is GatePhase.OWNER):
            return True
        self.suppressed += 1
        if event in LIFECYCLE_EVENTS:
            self._lifecycle.pop((event, args), None)
            self._lifecycle[(event, args)] = None
        return False

    # --- phases ---------------------------------------------------------------------------------------------
    def observe(self, ownership: Ownership) -> list[KeptEvent]:
        """Apply one ownership verdict; return the kept events to submit to the claims now, oldest first
        (only at the switch). A fence drops them (counted in ``dropped``)."""
        if self.phase in (GatePhase.OFF, GatePhase.HANDED_OVER, GatePhase.EXCLUSIVE):
            if ownership.handed_over:  # an exclusive successor is a normal owner: a later switch hands it over
                self.phase = GatePhase.HANDED_OVER
            return []
        if ownership.fenced:
            self.dropped += len(self.kept)
            self.kept.clear()
            return []
        if not ownership.owner:
            return []
        released: list[KeptEvent] = []
        if self.phase is GatePhase.SUCCESSOR:
            released = list(self.kept)
            self.kept.clear()
            self.released += len(released)
            self.phase = GatePhase.OWNER
        if ownership.exclusive:
            self.phase = GatePhase.EXCLUSIVE
        return released

    def take_lifecycle(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The suppressed lifecycle dispatches to run now (once, when exclusive), in their last order."""
        if not self.exclusive or not self._lifecycle:
            return []
        items = list(self._lifecycle)
        self._lifecycle.clear()
        return items

    # --- checks ---------------------------------------------------------------------------------------------
    def note_check(self) -> None:
        """A fast ownership check is being sent now."""
        self._last_check = self.clock.monotonic()

    def next_check(self) -> float | None:
        """Seconds until the next fast ownership check (0: now); None when the phase needs none."""
        if self.phase not in (GatePhase.SUCCESSOR, GatePhase.OWNER):
            return None
        return max(0.0, self._last_check + self.check_interval - self.clock.monotonic())

    def status(self) -> dict[str, Any]:
        """Counters for logs and tests."""
        return {"phase": str(self.phase), "kept": len(self.kept), "released": self.released,
                "overflowed": self.overflowed, "dropped": self.dropped, "suppressed": self.suppressed}


class GuildStream:
    """Has every shard received the guilds its READY announced? (pure)

    discord.py's own ready (``on_shard_ready``) comes ``guild_ready_timeout`` seconds (2 s by default) after the
    last ``GUILD_CREATE``; a successor's cache is full as soon as each guild listed in its shards' READY has
    arrived, so it reports ready then and the switch does not wait for that timeout. Without member chunking
    only: chunking fills the member cache later, and then discord.py's ready is the one that counts."""

    def __init__(self, shard_ids: tuple[int, ...]) -> None:
        self._shards = frozenset(shard_ids)
        self._pending: dict[int, set[str]] = {}

    def on_parse(self, shard: Any, event: str, data: Any) -> None:
        """Feed one raw gateway dispatch of ``shard``."""
        if not isinstance(shard, int) or not isinstance(data, dict):
            return
        if event == "READY":
            guilds = data.get("guilds")
            ids = {str(g.get("id")) for g in guilds if isinstance(g, dict)} if isinstance(guilds, list) else set()
            self._pending[shard] = ids
        elif event in ("GUILD_CREATE", "GUILD_DELETE") and shard in self._pending:
            self._pending[shard].discard(str(data.get("id")))

    @property
    def complete(self) -> bool:
        """Every shard had its READY and every guild it listed arrived."""
        return bool(self._shards) and all(not self._pending.get(s, {""}) for s in self._shards)
