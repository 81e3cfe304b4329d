"""The broker's operator commands (:class:`BrokerCommands`) without a broker: a reconciler on a fake clock, and a
``wait_tick`` callback that plays the broker's tick (it advances the clock and changes what a tick would change).

The paths tested here never reach Redis: the store's client is never connected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from letsfrag.broker.broker_commands import BrokerCommands
from letsfrag.broker.moves import Move
from letsfrag.broker.reconcile import Outcome, Reconciler
from letsfrag.broker.store import Store
from letsfrag.clock import FakeClock
from letsfrag.config import BrokerConfig
from letsfrag.contract.actions import BrokerAction
from letsfrag.contract.keys import Keys
from letsfrag.contract.records import LayoutRecord
from letsfrag.events import Severity

LAYOUT = LayoutRecord(shard_count=8, shards_per_cluster=4, cluster_count=2, max_concurrency=1, identify_window=5.0,
                      lease_ttl=4.0, lease_grace=2.0, heartbeat_interval=1.0)
INTERVAL = 0.5


class Harness:
    """A reconciler and its commands; ``tick`` is what every ``wait_tick`` does (besides advancing the clock)."""

    def __init__(self, *, command_wait: float = 5.0, max_command_wait: float = 30.0) -> None:
        self.clock = FakeClock()
        self.events: list[tuple[Severity, str, str]] = []
        self.wakes = 0
        self.ticks = 0
        self.tick: Callable[[], None] = lambda: None
        keys = Keys("test")
        store = Store(aioredis.Redis(host="127.0.0.1", port=1), keys, "broker-a")  # never connected
        self.rec = Reconciler(BrokerConfig(shards=8, shards_per_cluster=4), LAYOUT, store, event=self._event,
                              fire=self._never, notify=self._never, move_timeout=30.0, clock=self.clock)
        self.commands = BrokerCommands(self.rec, event=self._event, wake=self._wake, wait_tick=self._wait_tick,
                                       recommended=lambda: 16, interval=INTERVAL, command_wait=command_wait,
                                       max_command_wait=max_command_wait, handover_timeout=60.0)

    async def _event(self, severity: Severity, kind: str, message: str, **fields: Any) -> None:
        self.events.append((severity, kind, message))

    async def _never(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("the command reached the bus")

    def _wake(self) -> None:
        self.wakes += 1

    async def _wait_tick(self, timeout: float) -> None:
        self.ticks += 1
        self.clock.advance(timeout)
        self.tick()


async def test_unknown_actions_and_malformed_payloads_are_refused_with_what_is_accepted() -> None:
    h = Harness()
    reply = await h.commands.handle({"action": "explode"})
    assert reply["ok"] is False and "'explode'" in reply["message"]
    assert all(action in reply["message"] for action in BrokerAction)
    for action in ("drain", "undrain", "rolling_restart"):
        reply = await h.commands.handle({"action": action, "host": "nowhere"})
        assert reply == {"ok": False, "message": f"{action}: unknown host 'nowhere' (known hosts: none)"}
    for cluster in (True, -1, "0", None):
        reply = await h.commands.handle({"action": "restart", "cluster": cluster})
        assert reply["ok"] is False and f"found {cluster!r}" in reply["message"]
    reply = await h.commands.handle({"action": "reshard", "shards": "lots"})
    assert reply["ok"] is False and reply["refused"] is True and reply["executed"] is False
    assert h.ticks == 0 and h.events == []


def test_the_wait_of_a_payload_defaults_to_command_wait_and_is_capped() -> None:
    commands = Harness(command_wait=5.0, max_command_wait=30.0).commands
    assert commands._wait_of({}) == 5.0
    assert commands._wait_of({"wait": 12}) == 12.0
    assert commands._wait_of({"wait": 1e9}) == 30.0
    for bad in (True, 0, -3, "10"):
        assert commands._wait_of({"wait": bad}) == 5.0


async def test_restart_replies_once_the_tick_reports_the_switch() -> None:
    h = Harness()

    def switch_on_second_tick() -> None:
        if h.ticks == 2:
            serial = max(h.rec.outcomes)
            h.rec.outcomes[serial] = Outcome(serial, 1, "switched", "cluster 1: switched", epoch=7, host="h",
                                             seconds=1.23456)

    h.tick = switch_on_second_tick
    reply = await h.commands.handle({"action": "restart", "cluster": 1, "wait": 10})
    assert reply == {"ok": True, "done": True, "cluster": 1, "state": "switched", "message": "cluster 1: switched",
                     "epoch": 7, "seconds": 1.235}
    assert h.ticks == 2 and h.wakes == 2
    assert h.rec.outcomes == {}  # the command read its outcome


async def test_restart_without_a_switch_within_the_wait_says_it_goes_on() -> None:
    h = Harness()
    reply = await h.commands.handle({"action": "restart", "cluster": 0, "wait": 3})
    assert reply["ok"] is False and reply["done"] is False
    assert reply["message"] == "cluster 0: queued; no switch yet within the wait (the handover goes on)"
    assert h.clock.monotonic() - 1000.0 >= 3.0  # it waited the whole wait, on the reconciler's clock
    assert h.ticks == 3  # in steps of at most two tick intervals


async def test_restart_of_a_host_that_cannot_hand_over_names_the_fallback() -> None:
    h = Harness()

    def fall_back() -> None:
        serial = max(h.rec.outcomes)
        h.rec.outcomes[serial] = Outcome(serial, 0, "fallback", "cluster 0: its host does not take part", host="h1")

    h.tick = fall_back
    reply = await h.commands.handle({"action": "restart", "cluster": 0})
    assert reply["ok"] is False and reply["fallback"] == "host" and reply["host"] == "h1"


async def test_rebalance_reports_balanced_blocked_or_in_progress() -> None:
    h = Harness()
    h.tick = lambda: setattr(h.rec, "rebalance_requested", False)
    assert await h.commands.handle({"action": "rebalance"}) == {"ok": True, "done": True,
                                                               "message": "clusters are balanced"}
    assert [kind for _, kind, _ in h.events] == ["rebalance"]

    def blocked() -> None:
        h.rec.rebalance_requested = False
        h.rec.rebalance_blocked = True

    h.tick = blocked
    reply = await h.commands.handle({"action": "rebalance"})
    assert reply["ok"] is False and "refused or rolled back" in reply["message"]

    h = Harness(command_wait=2.0)
    h.rec.moves.begin(Move(cluster=1, source="h1", target="h2", reason="rebalance", started=h.clock.monotonic()))
    reply = await h.commands.handle({"action": "rebalance"})
    assert reply == {"ok": True, "done": False, "message": "rebalancing: 1 move(s) in progress; continuing"}
