"""Claim before handle, the parts without a gateway: identities, the claim set, the per-shard order, the SET NX."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from support.cluster import KEYS

from letsfrag.claims import (
    CLAIM_TTL,
    DEFAULT_CLAIM_EVENTS,
    Claimer,
    ClaimSequencer,
    check_claim_events,
    claim_identity,
)
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
    assert await r.get(KEYS.claim("MESSAGE_CREATE:99")) == "0/1"
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
    await r.set(KEYS.claim("MESSAGE_CREATE:2"), "9/9")
    claimer = Claimer(r, KEYS, "0/1")
    answers = await asyncio.gather(*(claimer.claim(f"MESSAGE_CREATE:{n}") for n in range(1, 4)))
    assert answers == [True, False, True]
    assert await r.get(KEYS.claim("MESSAGE_CREATE:3")) == "0/1"


async def test_a_claim_fails_when_redis_is_unreachable() -> None:
    unreachable = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        with pytest.raises((OSError, aioredis.ConnectionError)):
            await Claimer(unreachable, KEYS, "0/1").claim("MESSAGE_CREATE:1")
    finally:
        await unreachable.aclose()
