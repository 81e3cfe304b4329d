"""The cluster side of a planned handover, pure: ownership verdicts with the handover record, the successor's
gate, the gateway marker and the graceful drain of the claims (fake clock, no processes)."""

from __future__ import annotations

import asyncio
import json

import pytest

from letsfrag.claims import ClaimSequencer
from letsfrag.clock import FakeClock
from letsfrag.cluster.gateway_hooks import marked_url
from letsfrag.cluster.guard import Ownership, decide_ownership
from letsfrag.cluster.handover_gate import GatePhase, HandoverGate
from letsfrag.contract.handover import HandoverRecord, HandoverState

OLD = json.dumps({"host": "h1", "epoch": 3})
NEW = json.dumps({"host": "h2", "epoch": 4})


def record(state: HandoverState = HandoverState.PREPARING, host: str = "h2", epoch: int = 4) -> str:
    return HandoverRecord(cluster=2, host=host, epoch=epoch, from_host="h1", from_epoch=3, reason="restart",
                          state=state, started=1000.0, deadline=1060.0).to_json()


def judge(assignment: str | None, handover: str | None, *, successor: bool, host: str = "h2", epoch: int = 4,
          lease: str | None = "inc", pttl: int = 4000) -> Ownership:
    return decide_ownership(assignment, lease, pttl, cluster_id=2, host_id=host, epoch=epoch, incarnation="inc",
                            default_ttl=10.0, handover=handover, successor=successor, handover_key="ns:handover")


# --- verdicts of a successor ------------------------------------------------------------------------------------
def test_a_successor_before_the_switch_may_run_but_not_dispatch() -> None:
    verdict = judge(OLD, record(), successor=True)
    assert (verdict.owner, verdict.successor, verdict.fenced, verdict.ttl) == (False, True, False, 4.0)
    assert "h1 epoch 3 still owns it" in verdict.reason


def test_a_successor_after_the_switch_is_owner_exclusive_only_once_the_record_is_gone() -> None:
    switched = judge(NEW, record(HandoverState.SWITCHED), successor=True)
    assert (switched.owner, switched.exclusive, switched.successor) == (True, False, False)
    also_preparing = judge(NEW, record(), successor=True)  # the record rewrite is what the broker does with it
    assert (also_preparing.owner, also_preparing.exclusive) == (True, False)
    gone = judge(NEW, None, successor=True)
    assert (gone.owner, gone.exclusive, gone.reason) == (True, True, "owner")
    next_handover = judge(NEW, record(host="h3", epoch=5), successor=True)  # names someone else: exclusive
    assert (next_handover.owner, next_handover.exclusive) == (True, True)


@pytest.mark.parametrize(("assignment", "handover", "lease", "reason_part"), [
    (OLD, None, "inc", "rolled back"),
    (OLD, record(host="h3", epoch=5), "inc", "now goes to host h3 epoch 5"),
    (OLD, record(HandoverState.SWITCHED), "inc", "says switched"),
    (OLD, record(), None, "lease has expired"),
    (OLD, record(), "other", "another incarnation"),
    (OLD, "{broken", "inc", "cannot read the handover record: ns:handover field '2' is not JSON"),
    (OLD, json.dumps({"host": "h2", "from_host": "h1", "state": "later"}), "inc", "unknown state"),
    (None, record(), "inc", "no longer assigned"),
    (NEW, record(HandoverState.SWITCHED), None, "lease has expired"),
])
def test_a_successor_is_fenced_otherwise(assignment: str | None, handover: str | None, lease: str | None,
                                         reason_part: str) -> None:
    verdict = judge(assignment, handover, successor=True, lease=lease)
    assert verdict.fenced and not verdict.successor and not verdict.owner
    assert reason_part in verdict.reason


def test_an_owning_successor_with_an_unreadable_record_stays_not_exclusive() -> None:
    verdict = judge(NEW, "{broken", successor=True)
    assert (verdict.owner, verdict.exclusive) == (True, False)
    assert "unreadable" in verdict.reason and "ns:handover" in verdict.reason


# --- verdicts of a normal process (the old one) -----------------------------------------------------------------
@pytest.mark.parametrize("handover", [None, record(), record(HandoverState.SWITCHED), "{broken"])
def test_the_old_process_owns_its_cluster_whatever_the_record_says(handover: str | None) -> None:
    verdict = judge(OLD, handover, successor=False, host="h1", epoch=3)
    assert verdict == Ownership(True, "owner", 4.0)


def test_the_old_process_is_handed_over_after_the_switch_and_fenced_once_the_record_is_gone() -> None:
    handed = judge(NEW, record(HandoverState.SWITCHED), successor=False, host="h1", epoch=3)
    assert (handed.owner, handed.handed_over, handed.fenced) == (True, True, False)
    assert "handed over to host h2 epoch 4" in handed.reason
    for handover in (None, record(), "{broken", record(HandoverState.SWITCHED, host="h3", epoch=5)):
        verdict = judge(NEW, handover, successor=False, host="h1", epoch=3)
        assert verdict.fenced and "now belongs to host h2 epoch 4" in verdict.reason
    expired = judge(NEW, record(HandoverState.SWITCHED), successor=False, host="h1", epoch=3, lease=None)
    assert expired.fenced and "lease has expired" in expired.reason


def test_a_normal_process_never_becomes_a_successor() -> None:
    verdict = judge(OLD, record(), successor=False)  # this process is h2/4 but was not started as a successor
    assert verdict.fenced and "now belongs to host h1 epoch 3" in verdict.reason


# --- the gate ----------------------------------------------------------------------------------------------------
SUCCESSOR = Ownership(False, "successor", 4.0, successor=True)
SWITCHED = Ownership(True, "owner since the switch", 4.0, exclusive=False)
EXCLUSIVE = Ownership(True, "owner", 4.0)
FENCED = Ownership(False, "rolled back")


def test_a_normal_process_gates_nothing() -> None:
    gate = HandoverGate(FakeClock(), successor=False)
    assert gate.phase is GatePhase.OFF and gate.exclusive and not gate.keeps and gate.writes_allowed
    assert gate.allows_dispatch("message", (), claimed=False)
    assert gate.observe(SWITCHED) == [] and gate.next_check() is None


def test_the_gate_keeps_claimable_events_in_order_and_releases_them_at_the_switch() -> None:
    gate = HandoverGate(FakeClock(), successor=True, limit=3)
    assert gate.keeps and not gate.writes_allowed
    ran: list[str] = []
    for index in range(5):
        gate.keep(index % 2, f"MESSAGE_CREATE:{index}", lambda index=index: ran.append(str(index)))
    assert (len(gate.kept), gate.overflowed) == (3, 2)
    assert gate.observe(SUCCESSOR) == [] and gate.phase is GatePhase.SUCCESSOR
    released = gate.observe(SWITCHED)
    assert [(item.lane, item.identity) for item in released] == [
        (0, "MESSAGE_CREATE:0"), (1, "MESSAGE_CREATE:1"), (0, "MESSAGE_CREATE:2")]
    for item in released:
        item.parse()
    assert ran == ["0", "1", "2"] and gate.phase is GatePhase.OWNER and not gate.keeps and gate.writes_allowed
    assert gate.observe(SWITCHED) == [] and gate.released == 3


def test_dispatch_rules_per_phase() -> None:
    gate = HandoverGate(FakeClock(), successor=True)
    assert not gate.allows_dispatch("message", (), claimed=True)  # nothing runs before the switch
    assert not gate.allows_dispatch("reaction_add", (), claimed=False)
    gate.observe(SWITCHED)
    assert gate.allows_dispatch("message", (), claimed=True)  # the parse of a won claim
    assert not gate.allows_dispatch("reaction_add", (), claimed=False)  # the old process may still dispatch it
    gate.observe(EXCLUSIVE)
    assert gate.phase is GatePhase.EXCLUSIVE and gate.exclusive
    assert gate.allows_dispatch("reaction_add", (), claimed=False)
    assert gate.suppressed == 3


def test_suppressed_lifecycle_events_run_once_when_exclusive() -> None:
    gate = HandoverGate(FakeClock(), successor=True)
    for event, args in [("shard_ready", (0,)), ("shard_ready", (1,)), ("ready", ()), ("typing", ()),
                        ("shard_ready", (0,))]:
        gate.allows_dispatch(event, args, claimed=False)
    gate.observe(SWITCHED)
    assert gate.take_lifecycle() == []  # not exclusive yet
    gate.observe(EXCLUSIVE)
    assert gate.take_lifecycle() == [("shard_ready", (1,)), ("ready", ()), ("shard_ready", (0,))]
    assert gate.take_lifecycle() == []


def test_the_switch_and_exclusivity_may_arrive_in_one_check() -> None:
    gate = HandoverGate(FakeClock(), successor=True)
    gate.keep(0, "GUILD_MEMBER_ADD:1:2:t", lambda: None)
    assert len(gate.observe(EXCLUSIVE)) == 1 and gate.phase is GatePhase.EXCLUSIVE


def test_a_fence_drops_the_kept_events() -> None:
    gate = HandoverGate(FakeClock(), successor=True)
    gate.keep(0, "MESSAGE_CREATE:1", lambda: None)
    assert gate.observe(FENCED) == [] and (len(gate.kept), gate.dropped) == (0, 1)


def test_fast_checks_until_exclusive() -> None:
    clock = FakeClock()
    gate = HandoverGate(clock, successor=True, check_interval=0.2)
    assert gate.next_check() == 0.0
    gate.note_check()
    clock.advance(0.05)
    assert gate.next_check() == pytest.approx(0.15)
    clock.advance(0.5)
    assert gate.next_check() == 0.0
    gate.observe(SWITCHED)
    assert gate.next_check() == 0.0
    gate.observe(EXCLUSIVE)
    assert gate.next_check() is None


# --- the gateway marker and the drain ----------------------------------------------------------------------------
def test_the_marker_is_added_to_the_url_discord_py_built() -> None:
    url = "ws://127.0.0.1:8090/?v=10&encoding=json&compress=zlib-stream"
    assert marked_url(url, {"letsfrag_handover": "4"}) == url + "&letsfrag_handover=4"
    assert marked_url(url, None) == url


async def test_drain_lets_claims_in_flight_resolve_and_their_parses_run() -> None:
    answers: dict[str, asyncio.Future[bool]] = {}
    ran: list[str] = []

    def claim(identity: str) -> asyncio.Future[bool]:
        answers[identity] = asyncio.get_running_loop().create_future()
        return answers[identity]

    sequencer = ClaimSequencer(claim, lambda thunk: thunk())
    sequencer.submit(0, "MESSAGE_CREATE:1", lambda: ran.append("won"))
    sequencer.submit(0, None, lambda: ran.append("after"))
    sequencer.submit(1, "MESSAGE_CREATE:2", lambda: ran.append("never answered"))
    asyncio.get_running_loop().call_later(0.01, answers["MESSAGE_CREATE:1"].set_result, True)
    assert await sequencer.drain(0.2) == 1  # lane 1's claim never answers: bounded
    assert ran == ["won", "after"]
    await sequencer.close()


def test_the_old_process_keeps_dispatching_but_stops_writing_once_handed_over() -> None:
    gate = HandoverGate(FakeClock(), successor=False)
    gate.observe(EXCLUSIVE)
    assert gate.phase is GatePhase.OFF
    gate.observe(Ownership(True, "handed over", 4.0, handed_over=True))
    assert gate.phase is GatePhase.HANDED_OVER and gate.exclusive and not gate.writes_allowed
    assert gate.allows_dispatch("reaction_add", (), claimed=False) and gate.next_check() is None
    gate.observe(FENCED)
    assert gate.phase is GatePhase.HANDED_OVER


def test_an_exclusive_successor_is_handed_over_like_a_normal_process() -> None:
    """A successor that became the exclusive owner is a normal owner: a later handover or reshard (its generation
    retired) hands it over; it keeps dispatching through the claims and stops writing what an owner writes."""
    gate = HandoverGate(FakeClock(), successor=True)
    gate.observe(SWITCHED)
    gate.observe(EXCLUSIVE)
    assert gate.phase is GatePhase.EXCLUSIVE and gate.writes_allowed
    gate.observe(Ownership(True, "retired by the reshard to generation 3", 4.0, handed_over=True))
    assert gate.phase is GatePhase.HANDED_OVER and gate.exclusive and not gate.writes_allowed
    assert gate.next_check() is None


def test_guild_stream_is_complete_once_every_listed_guild_arrived() -> None:
    from letsfrag.cluster.handover_gate import GuildStream

    stream = GuildStream((0, 1))
    assert not stream.complete
    stream.on_parse(0, "READY", {"guilds": [{"id": "10", "unavailable": True}, {"id": "11"}]})
    stream.on_parse(1, "READY", {"guilds": []})
    assert not stream.complete
    stream.on_parse(0, "GUILD_CREATE", {"id": "10"})
    stream.on_parse(0, "MESSAGE_CREATE", {"id": "11"})  # other events change nothing
    assert not stream.complete
    stream.on_parse(0, "GUILD_DELETE", {"id": "11", "unavailable": True})  # an outage: it will not come
    assert stream.complete
    stream.on_parse(0, "READY", {"guilds": [{"id": "12"}]})  # a new session starts over
    assert not stream.complete
    assert not GuildStream(()).complete
    stream.on_parse(None, "GUILD_CREATE", {"id": "12"})  # no shard: ignored
    stream.on_parse(0, "GUILD_CREATE", "not a dict")
    assert not stream.complete
