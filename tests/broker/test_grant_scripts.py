"""The grants the broker's Lua scripts write (grant, grant_many, adopt, the handover switch) decode through
:class:`~letsfrag.contract.records.Grant` exactly as written, and the Lua check ``grant_names`` (handover
scripts, session saves) agrees with :meth:`Grant.names` — against a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from letsfrag.broker.store import Store
from letsfrag.cluster.session_records import SessionRecord, SessionStore
from letsfrag.contract.handover import HandoverRecord
from letsfrag.contract.keys import Keys
from letsfrag.contract.records import GRANT_LUA, MAX_EPOCH, Grant

KEYS = Keys("grants")
#: host ids a writer may be given: quotes, slashes (cjson writes ``\/``), backslashes, non-ASCII, JSON look-alikes
HOSTS = ["h1", 'quo"te', "a/b", "back\\slash", "ünï-cödé", "主机", '{"host": "x"}', "tab\there", "1"]


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.set(KEYS.leader, "b1")
        yield client
    finally:
        await client.aclose()


async def _stored(r: aioredis.Redis, cluster: int) -> Grant:
    return Grant.from_json(await r.hget(KEYS.assignment, str(cluster)), key=KEYS.assignment, field=str(cluster))


async def test_grant_and_grant_many_write_what_grant_reads(r: aioredis.Redis) -> None:
    store = Store(r, KEYS, "b1")
    for cluster, host in enumerate(HOSTS):
        epoch = await store.grant(cluster, host)
        assert await _stored(r, cluster) == Grant(host, epoch)
    epochs = await store.grant_many([(c, h) for c, h in enumerate(HOSTS)])
    for cluster, (host, epoch) in enumerate(zip(HOSTS, epochs, strict=True)):
        assert await _stored(r, cluster) == Grant(host, epoch)
    snap = await store.snapshot(1)
    assert snap.assignment == {c: Grant(h, e) for c, (h, e) in enumerate(zip(HOSTS, epochs, strict=True))}


async def test_the_largest_epochs_survive_lua_number_formatting(r: aioredis.Redis) -> None:
    """Lua writes numbers with %.14g: an epoch of 15 digits would reach the assignment as ``1e+14``."""
    store = Store(r, KEYS, "b1")
    await store.raise_epoch(MAX_EPOCH - 2)
    assert await store.grant(0, "h1") == MAX_EPOCH - 1
    assert await _stored(r, 0) == Grant("h1", MAX_EPOCH - 1)
    assert await store.grant(1, "h1") == MAX_EPOCH
    assert (await store.snapshot(1)).assignment[1] == Grant("h1", MAX_EPOCH)


async def test_adopt_writes_the_grant_as_given(r: aioredis.Redis) -> None:
    store = Store(r, KEYS, "b1")
    for cluster, host in enumerate(HOSTS):
        assert await store.adopt(cluster, Grant(host, 40 + cluster))
        assert await _stored(r, cluster) == Grant(host, 40 + cluster)
    assert not await store.adopt(0, Grant("other", 99))
    assert int(await r.get(KEYS.epoch)) == 40 + len(HOSTS) - 1


async def test_the_handover_switch_writes_what_grant_reads(r: aioredis.Redis) -> None:
    store = Store(r, KEYS, "b1")
    for cluster, (source, target) in enumerate(zip(HOSTS, reversed(HOSTS), strict=True)):
        epoch = await store.grant(cluster, source)
        begun = await store.begin_handover(cluster, target, Grant(source, epoch), "drain", 30.0)
        assert begun is not None and begun.names(target, epoch + 1)
        assert HandoverRecord.from_json(cluster, await r.hget(KEYS.handover, str(cluster))) == begun
        switched = await store.switch_handover(begun, 5.0)
        assert switched is not None
        assert await _stored(r, cluster) == Grant(target, begun.epoch)


async def test_the_lua_check_agrees_with_grant_names(r: aioredis.Redis) -> None:
    names = r.register_script(GRANT_LUA + "return grant_names(redis.call('HGET', KEYS[1], ARGV[1]), ARGV[2], ARGV[3]) "
                                          "and 1 or 0")
    values = {"0": Grant("h1", 5).to_json(), "1": Grant("a/b", 7).to_json(), "2": "{not json", "3": "[1]",
              "4": '{"host": 5, "epoch": 5}', "5": '{"host": "h1"}', "6": Grant('quo"te', 0).to_json()}
    await r.hset(KEYS.assignment, mapping=values)
    for cid, raw in [*values.items(), ("9", None)]:
        try:
            grant: Grant | None = Grant.from_json(raw)
        except ValueError:
            grant = None
        for host, epoch in [("h1", 5), ("a/b", 7), ('quo"te', 0), ("h1", 6), ("5", 5)]:
            expected = grant is not None and grant.names(host, epoch)
            assert bool(await names(keys=[KEYS.assignment], args=[cid, host, epoch])) is expected, (cid, host, epoch)


async def test_session_saves_follow_the_grant(r: aioredis.Redis) -> None:
    store = Store(r, KEYS, "b1")
    host = 'quo"te/ü'
    epoch = await store.grant(2, host)
    record = SessionRecord(0, "sess", "wss://gw", 5, epoch)
    assert await SessionStore(r, KEYS, 2, owner=(host, epoch)).save([record]) == 1
    later = SessionRecord(0, "sess", "wss://gw", 6, epoch + 1)
    assert await SessionStore(r, KEYS, 2, owner=(host, epoch + 1)).save([later]) == -1
    assert await SessionStore(r, KEYS, 2, owner=("other", epoch)).save([record]) == -1
