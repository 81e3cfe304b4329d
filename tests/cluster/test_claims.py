"""Claim before handle, the parts without a gateway: identities, the claim set, the per-shard order, the claim and
done scripts (the two phases), the handling of a won claim, its reply nonces and the session records' seq floor."""

from __future__ import annotations

import asyncio
import io
import json
import types
from typing import Any

import discord
import discord.abc
import pytest
import redis.asyncio as aioredis
from support.cluster import KEYS, grant

from letsfrag.claims import (
    CLAIM_TTL,
    DEFAULT_CLAIM_EVENTS,
    DONE,
    NONCE_LENGTH,
    PENDING,
    ClaimedHandling,
    Claimer,
    ClaimSequencer,
    ClaimValue,
    SeqFloor,
    check_claim_events,
    claim_identity,
    current_handling,
    parse_owner,
    reply_nonce,
)
from letsfrag.cluster import reply_nonces
from letsfrag.environment import ClusterEnvironment
from letsfrag.errors import NotInClusterError


def test_identities_of_the_claimed_events() -> None:
    assert claim_identity("MESSAGE_CREATE", {"id": "11", "content": "x"}) == "MESSAGE_CREATE:11"
    assert claim_identity("INTERACTION_CREATE", {"id": "12", "token": "t"}) == "INTERACTION_CREATE:12"
    join = {"guild_id": "5", "user": {"id": "7"}, "joined_at": "2026-12-01T10:00:00+00:00"}
    assert claim_identity("GUILD_MEMBER_ADD", join) == "GUILD_MEMBER_ADD:5:7:2026-12-01T10:00:00+00:00"
    # the same user joining again later is another event
    assert claim_identity("GUILD_MEMBER_ADD", {**join, "joined_at": "2026-12-01T10:05:00+00:00"}) != \
        claim_identity("GUILD_MEMBER_ADD", join)
    # an event without its identity, or one that is not claimable, is not claimed
    assert claim_identity("GUILD_MEMBER_ADD", {"guild_id": "5", "user": {"id": "7"}}) is None
    assert claim_identity("MESSAGE_CREATE", {"content": "no id"}) is None
    assert claim_identity("MESSAGE_UPDATE", {"id": "11"}) is None


def test_claim_set_is_checked() -> None:
    assert check_claim_events(["message_create", "MESSAGE_CREATE", " GUILD_MEMBER_ADD"]) == (
        "MESSAGE_CREATE", "GUILD_MEMBER_ADD")
    with pytest.raises(ValueError, match="'TYPING_START' cannot be claimed; claimable events: MESSAGE_CREATE"):
        check_claim_events(["TYPING_START"])


def test_claim_set_travels_in_the_environment_contract() -> None:
    env = ClusterEnvironment(cluster_id=0, shard_ids=(0,), shard_count=1, host_id="h", host_incarnation="i",
                             epoch=1, redis={"url": "redis://x"}, claim_events=("INTERACTION_CREATE",))
    variables = env.to_env()
    assert variables["LETSFRAG_CLAIM_EVENTS"] == "INTERACTION_CREATE"
    assert ClusterEnvironment.from_env(variables).claim_events == ("INTERACTION_CREATE",)
    assert ClusterEnvironment.from_env({**variables, "LETSFRAG_CLAIM_EVENTS": ""}).claim_events == ()
    del variables["LETSFRAG_CLAIM_EVENTS"]
    assert ClusterEnvironment.from_env(variables).claim_events == DEFAULT_CLAIM_EVENTS
    with pytest.raises(NotInClusterError, match="LETSFRAG_CLAIM_EVENTS: 'PRESENCE_UPDATE' cannot be claimed"):
        ClusterEnvironment.from_env({**variables, "LETSFRAG_CLAIM_EVENTS": "PRESENCE_UPDATE"})


class Gate:
    """Claims answered by the test, in any order it likes."""

    def __init__(self) -> None:
        self.pending: dict[str, asyncio.Future[bool]] = {}

    async def claim(self, identity: str) -> bool:
        future = self.pending[identity] = asyncio.get_running_loop().create_future()
        return await future


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_shard_keeps_its_order_while_a_claim_is_out() -> None:
    gate = Gate()
    ran: list[str] = []
    sequencer = ClaimSequencer(gate.claim, lambda thunk: thunk())
    sequencer.submit(0, None, lambda: ran.append("guild_create"))  # nothing waits: runs at once
    assert ran == ["guild_create"]
    sequencer.submit(0, "MESSAGE_CREATE:1", lambda: ran.append("create 1"))
    sequencer.submit(0, None, lambda: ran.append("update 1"))  # must not overtake its MESSAGE_CREATE
    sequencer.submit(0, "MESSAGE_CREATE:2", lambda: ran.append("create 2"))
    sequencer.submit(1, None, lambda: ran.append("other shard"))  # another shard does not wait
    await settle()
    assert ran == ["guild_create", "other shard"] and sequencer.waiting == 3
    assert set(gate.pending) == {"MESSAGE_CREATE:1", "MESSAGE_CREATE:2"}  # both claims are out together
    gate.pending["MESSAGE_CREATE:2"].set_result(True)  # the later claim answers first: still nothing runs
    await settle()
    assert ran == ["guild_create", "other shard"]
    gate.pending["MESSAGE_CREATE:1"].set_result(False)  # another session won message 1
    await settle()
    assert ran == ["guild_create", "other shard", "update 1", "create 2"]
    assert (sequencer.won, sequencer.lost, sequencer.waiting) == (1, 1, 0)
    await sequencer.close()


async def test_a_failing_parse_or_claim_does_not_stop_the_shard() -> None:
    ran: list[str] = []

    async def claim(identity: str) -> bool:
        if identity == "bad":
            raise RuntimeError("claim bug")
        return True

    def broken() -> None:
        raise RuntimeError("parser bug")

    sequencer = ClaimSequencer(claim, lambda thunk: thunk())
    sequencer.submit(0, "bad", lambda: ran.append("never"))
    sequencer.submit(0, "ok-1", broken)
    sequencer.submit(0, "ok-2", lambda: ran.append("ok-2"))
    for _ in range(50):
        if not sequencer.waiting:
            break
        await asyncio.sleep(0.01)
    assert ran == ["ok-2"] and (sequencer.won, sequencer.lost) == (2, 1)
    await sequencer.close()


async def test_close_cancels_what_waits() -> None:
    gate = Gate()
    ran: list[str] = []
    sequencer = ClaimSequencer(gate.claim, lambda thunk: thunk())
    sequencer.submit(0, "a", lambda: ran.append("a"))
    await settle()
    await sequencer.close()
    assert gate.pending["a"].cancelled() and sequencer.waiting == 0 and ran == []


async def test_claimer_sets_once_with_owner_and_ttl(r: aioredis.Redis) -> None:
    first = Claimer(r, KEYS, "0/1")
    second = Claimer(r, KEYS, "0/2")
    assert await first.claim("MESSAGE_CREATE:99") is True
    assert await second.claim("MESSAGE_CREATE:99") is False
    assert await r.get(KEYS.claim("MESSAGE_CREATE:99")) == "pending:0/1"
    ttl = await r.pttl(KEYS.claim("MESSAGE_CREATE:99"))
    assert CLAIM_TTL * 1000 - 5000 < ttl <= CLAIM_TTL * 1000


async def test_a_failed_claim_is_retried_when_the_owner_says_so() -> None:
    ran: list[str] = []
    retried: list[str] = []

    async def claim(identity: str) -> bool:
        raise ConnectionError("Redis went away")

    async def retry(identity: str) -> bool:
        retried.append(identity)
        return True

    sequencer = ClaimSequencer(claim, lambda thunk: thunk(), retry=retry)
    sequencer.submit(0, "MESSAGE_CREATE:1", lambda: ran.append("create 1"))
    for _ in range(50):
        if ran:
            break
        await asyncio.sleep(0.01)
    assert ran == ["create 1"] and retried == ["MESSAGE_CREATE:1"]
    await sequencer.close()


async def test_claims_of_one_loop_turn_share_one_pipeline(r: aioredis.Redis) -> None:
    await r.set(KEYS.claim("MESSAGE_CREATE:2"), "9/9")  # the one-phase format of older versions: done
    claimer = Claimer(r, KEYS, "0/1")
    answers = await asyncio.gather(*(claimer.claim(f"MESSAGE_CREATE:{n}") for n in range(1, 4)),
                                   claimer.done("MESSAGE_CREATE:1"))
    assert answers == [True, False, True, True]
    assert await r.get(KEYS.claim("MESSAGE_CREATE:3")) == "pending:0/1"
    assert await r.get(KEYS.claim("MESSAGE_CREATE:1")) == "done:0/1"


async def test_a_claim_fails_when_redis_is_unreachable() -> None:
    unreachable = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        with pytest.raises((OSError, aioredis.ConnectionError)):
            await Claimer(unreachable, KEYS, "0/1").claim("MESSAGE_CREATE:1")
    finally:
        await unreachable.aclose()


def test_claim_values_both_ways() -> None:
    assert str(ClaimValue(PENDING, 3, 17)) == "pending:3/17" and ClaimValue.parse("pending:3/17") == ClaimValue(
        PENDING, 3, 17)
    assert ClaimValue.parse(b"done:0/1") == ClaimValue(DONE, 0, 1) and ClaimValue(DONE, 0, 1).owner == "0/1"
    assert str(ClaimValue(PENDING, 3, 17, "ab12.4")) == "pending:3/17/ab12.4"
    assert ClaimValue.parse("pending:3/17/ab12.4") == ClaimValue(PENDING, 3, 17, "ab12.4")
    assert ClaimValue.parse(b"done:0/1/x.2") == ClaimValue(DONE, 0, 1, "x.2")
    assert ClaimValue.parse("pending:3/17") == ClaimValue(PENDING, 3, 17, None)  # an earlier two-part value
    for raw in (None, "0/1", "pending:0", "pending:a/1", "claimed:0/1", "pending:0/1/", "pending:0/1/a-b",
                "pending:0/1/2/3", ""):
        assert ClaimValue.parse(raw) is None, raw  # absent, or an older one-phase claim
    assert parse_owner("12/40") == (12, 40)
    with pytest.raises(ValueError, match="<cluster>/<epoch>"):
        parse_owner("h0")


async def test_the_two_phases_of_a_claim(r: aioredis.Redis) -> None:
    """pending -> done; a pending claim of an owner no longer live is taken over, a done one never is; a fenced
    process never marks another owner's claim done."""
    key = KEYS.claim("MESSAGE_CREATE:7")
    await grant(r, 0, "h0", 1)
    await grant(r, 1, "h1", 5)
    old, again, other = Claimer(r, KEYS, "0/1"), Claimer(r, KEYS, "0/1"), Claimer(r, KEYS, "1/5")
    assert await old.claim("MESSAGE_CREATE:7") is True and await r.get(key) == "pending:0/1"
    assert await again.claim("MESSAGE_CREATE:7") is False  # the same owner (another session of the same grant)
    assert await other.claim("MESSAGE_CREATE:7") is False  # the owner is live: its handler still runs
    await grant(r, 0, "h1", 2)  # h0 died (or froze): cluster 0 moved to epoch 2
    new = Claimer(r, KEYS, "0/2")
    assert await other.claim("MESSAGE_CREATE:7") is True and other.taken_over == 1  # any live cluster may take it
    assert await r.get(key) == "pending:1/5" and CLAIM_TTL * 1000 - 5000 < await r.pttl(key)
    assert await new.claim("MESSAGE_CREATE:7") is False  # 1/5 is live
    assert await old.done("MESSAGE_CREATE:7") is False and await r.get(key) == "pending:1/5"  # fenced: no effect
    assert await other.done("MESSAGE_CREATE:7") is True and await r.get(key) == "done:1/5"
    await grant(r, 1, "h0", 6)
    assert await new.claim("MESSAGE_CREATE:7") is False  # done always loses, whoever owned it
    assert await other.done("MESSAGE_CREATE:7") is False and await r.get(key) == "done:1/5"


async def test_a_stale_claimant_or_a_live_handover_source_cannot_take_over(r: aioredis.Redis) -> None:
    await grant(r, 0, "h1", 2)
    await r.set(KEYS.claim("MESSAGE_CREATE:8"), "pending:0/1")
    stale = Claimer(r, KEYS, "3/1")  # cluster 3 has no grant for epoch 1: a fenced process
    assert await stale.claim("MESSAGE_CREATE:8") is False
    # a planned handover from epoch 1 to 2 is switched but the old process still runs: its claims are live
    await r.hset(KEYS.handover, "0", json.dumps({"host": "h1", "epoch": 2, "from_host": "h0", "from_epoch": 1}))
    assert await Claimer(r, KEYS, "0/2").claim("MESSAGE_CREATE:8") is False
    await r.hdel(KEYS.handover, "0")  # the old process is gone
    assert await Claimer(r, KEYS, "0/2").claim("MESSAGE_CREATE:8") is True
    assert await r.get(KEYS.claim("MESSAGE_CREATE:8")) == "pending:0/2"


async def test_a_restarted_run_takes_over_the_pending_claims_of_its_dead_runs(r: aioredis.Redis) -> None:
    """A cluster restarted in place keeps its epoch: its new run takes over the pending claims of the runs its
    supervisor reaped, never those of a run not known dead, of an unknown run, of another epoch still live, nor a
    done one; and only while its own epoch is the grant."""
    await grant(r, 0, "h0", 1)
    await grant(r, 1, "h0", 3)
    values = {"dead": "pending:0/1/s1.1", "live": "pending:0/1/s1.7", "unknown": "pending:0/1",
              "done": "done:0/1/s1.1", "other": "pending:1/3/s1.1"}
    for name, value in values.items():
        await r.set(KEYS.claim(f"MESSAGE_CREATE:{name}"), value)
    restarted = Claimer(r, KEYS, "0/1", run="s1.2", dead_runs=("s1.0", "s1.1"))
    answers = await asyncio.gather(*(restarted.claim(f"MESSAGE_CREATE:{name}") for name in values))
    assert dict(zip(values, answers, strict=True)) == {"dead": True, "live": False, "unknown": False, "done": False,
                                                        "other": False}
    assert restarted.taken_over == 1 and await r.get(KEYS.claim("MESSAGE_CREATE:dead")) == "pending:0/1/s1.2"
    assert await restarted.done("MESSAGE_CREATE:dead") is True
    assert await r.get(KEYS.claim("MESSAGE_CREATE:dead")) == "done:0/1/s1.2"
    # the dead run's own late mark (a woken process) no longer matches: the claim stays the new run's
    assert await Claimer(r, KEYS, "0/1", run="s1.1").done("MESSAGE_CREATE:dead") is False
    # a run whose epoch is no longer the grant takes nothing over, even of its dead runs
    await r.set(KEYS.claim("MESSAGE_CREATE:late"), "pending:0/1/s1.1")
    await grant(r, 0, "h1", 2)
    assert await restarted.claim("MESSAGE_CREATE:late") is False
    assert await r.get(KEYS.claim("MESSAGE_CREATE:late")) == "pending:0/1/s1.1"
    with pytest.raises(ValueError, match="run identity"):
        Claimer(r, KEYS, "0/1", run="s1.2", dead_runs=("a,b",))


def test_reply_nonces_are_per_event_and_index() -> None:
    first = reply_nonce("MESSAGE_CREATE:11", 0)
    assert first == reply_nonce("MESSAGE_CREATE:11", 0) and len(first) == NONCE_LENGTH == 25
    assert len({first, reply_nonce("MESSAGE_CREATE:11", 1), reply_nonce("MESSAGE_CREATE:12", 0)}) == 3


async def test_a_handling_ends_when_its_parse_and_tasks_have() -> None:
    ended: list[tuple[str, bool]] = []
    handling = ClaimedHandling("MESSAGE_CREATE:1", lambda identity, completed: ended.append((identity, completed)))
    release = asyncio.Event()
    task = asyncio.ensure_future(release.wait())
    handling.add(task)
    assert [handling.next_nonce(), handling.next_nonce()] == [reply_nonce("MESSAGE_CREATE:1", i) for i in (0, 1)]
    handling.parsed()
    await asyncio.sleep(0)
    assert ended == [] and handling.running == 1  # its handler still runs
    release.set()
    await task
    await asyncio.sleep(0)
    assert ended == [("MESSAGE_CREATE:1", True)]
    handling.add(asyncio.ensure_future(asyncio.sleep(0)))  # too late: the handling is over
    assert handling.running == 0

    nothing = ClaimedHandling("MESSAGE_CREATE:2", lambda identity, completed: ended.append((identity, completed)))
    nothing.parsed()  # a parse that started no handler is done at once
    killed = ClaimedHandling("MESSAGE_CREATE:3", lambda identity, completed: ended.append((identity, completed)))
    victim = asyncio.ensure_future(asyncio.sleep(10))
    killed.add(victim)
    killed.parsed()
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    await asyncio.sleep(0)
    assert ended[1:] == [("MESSAGE_CREATE:2", True), ("MESSAGE_CREATE:3", False)]  # cancelled: stays pending


def test_session_records_stay_before_the_oldest_unfinished_handling() -> None:
    floor = SeqFloor()
    assert floor.recordable(0, 40) == 40
    floor.begin(0, "MESSAGE_CREATE:1", 31)
    floor.begin(0, "MESSAGE_CREATE:2", 35)
    floor.begin(1, "MESSAGE_CREATE:3", 9)
    assert (floor.recordable(0, 40), floor.recordable(1, 12), floor.recordable(2, 5)) == (30, 8, 5)
    floor.end("MESSAGE_CREATE:1")
    assert floor.recordable(0, 40) == 34
    floor.end("MESSAGE_CREATE:2")
    floor.end("MESSAGE_CREATE:unknown")
    assert floor.recordable(0, 41) == 41 and floor.recordable(1, 12) == 8


class FakeChannel(discord.abc.Messageable):
    """A Messageable whose messages are recorded, not sent: ``sent`` holds each request's parameters."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        http = types.SimpleNamespace(send_message=self._send_message)
        self._state = types.SimpleNamespace(allowed_mentions=None, http=http,  # type: ignore[assignment]
                                            create_message=lambda channel, data: data)

    async def _get_channel(self) -> Any:
        return types.SimpleNamespace(id=1)

    async def _send_message(self, channel_id: int, *, params: Any) -> dict[str, Any]:
        payload = params.payload if params.payload is not None else json.loads(params.multipart[0]["value"])
        self.sent.append(payload)
        return payload


async def test_messages_sent_while_a_claim_is_handled_carry_the_event_nonce() -> None:
    reply_nonces.install()
    assert reply_nonces.install() is False  # once
    channel = FakeChannel()
    await channel.send("outside")  # discord.py's random nonce
    token = current_handling.set(ClaimedHandling("MESSAGE_CREATE:5", lambda identity, completed: None))
    try:
        await channel.send("pong 5")
        await channel.send("mine", nonce="own")  # the bot's own nonce is kept
        await channel.send("file", file=discord.File(io.BytesIO(b"x"), "x.txt"))  # multipart
    finally:
        current_handling.reset(token)
    outside, first, own, second = channel.sent
    assert outside["enforce_nonce"] is True and outside["nonce"] not in (reply_nonce("MESSAGE_CREATE:5", 0),)
    assert (first["nonce"], first["enforce_nonce"]) == (reply_nonce("MESSAGE_CREATE:5", 0), True)
    assert own["nonce"] == "own"
    assert (second["nonce"], second["content"]) == (reply_nonce("MESSAGE_CREATE:5", 1), "file")


async def test_claims_after_redis_forgot_the_scripts(r: aioredis.Redis) -> None:
    """A pipeline whose EVALSHA is refused with NOSCRIPT (Redis restarted) sends those commands again, once."""
    claimer = Claimer(r, KEYS, "0/1")
    assert await claimer.claim("MESSAGE_CREATE:20") is True
    await r.script_flush()
    answers = await asyncio.gather(claimer.claim("MESSAGE_CREATE:20"), claimer.claim("MESSAGE_CREATE:21"),
                                   claimer.done("MESSAGE_CREATE:20"))
    assert answers == [False, True, True]
    await r.script_flush()
    assert await claimer.claim("MESSAGE_CREATE:22") is True
    assert await r.mget([KEYS.claim(f"MESSAGE_CREATE:{n}") for n in (20, 21, 22)]) == [
        "done:0/1", "pending:0/1", "pending:0/1"]


async def test_flush_waits_for_the_marks_in_flight(r: aioredis.Redis) -> None:
    claimer = Claimer(r, KEYS, "0/1")
    assert await claimer.claim("MESSAGE_CREATE:30") is True
    mark = claimer.done("MESSAGE_CREATE:30")
    assert await claimer.flush(5.0) == 0 and mark.done() and mark.result() is True
    assert await claimer.flush(5.0) == 0  # nothing out
