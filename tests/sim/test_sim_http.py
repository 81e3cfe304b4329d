"""REST and control endpoints over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from support.sim import raw_gateway

from letsfrag.sim import Simulator

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bot some-token"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_rest_answers_with_exactly_application_json(http: aiohttp.ClientSession) -> None:
    async with Simulator(guilds=4) as sim:
        for path in ("/users/@me", "/oauth2/applications/@me", "/applications/@me", "/gateway/bot"):
            async with http.get(sim.api_url + path, headers=AUTH) as response:
                assert response.status == 200, path
                assert response.headers["Content-Type"] == "application/json", path
                await response.json()
        assert sim.stats()["rest_requests"] == 4


async def test_gateway_bot_reports_shards_and_the_session_budget(http: aiohttp.ClientSession) -> None:
    async with Simulator(shards=16, max_concurrency=4, session_start_total=50, identify_window=0) as sim:
        async with raw_gateway(sim) as gw:
            await gw.recv()
            await gw.identify([5, 16])
            await gw.recv_until(lambda p: p.get("t") == "READY")
        async with http.get(sim.api_url + "/gateway/bot", headers=AUTH) as response:
            data = await response.json()
        assert data["url"] == sim.gateway_url and data["shards"] == 16
        limit = data["session_start_limit"]
        assert limit["total"] == 50 and limit["remaining"] == 49 and limit["max_concurrency"] == 4
        assert 0 < limit["reset_after"] <= 86_400_000


async def test_tokens_are_checked(http: aiohttp.ClientSession) -> None:
    async with Simulator(token="right") as sim:
        cases: list[tuple[dict[str, str], int]] = [
            ({}, 401), ({"Authorization": "Bot wrong"}, 401), ({"Authorization": "Bot right"}, 200)
        ]
        for headers, status in cases:
            async with http.get(sim.api_url + "/users/@me", headers=headers) as response:
                assert response.status == status
                assert response.headers["Content-Type"] == "application/json"
    async with Simulator() as sim:
        async with http.get(sim.api_url + "/users/@me", headers={"Authorization": "Bot "}) as response:
            assert response.status == 401


async def test_unknown_routes_are_json_404_and_counted(http: aiohttp.ClientSession) -> None:
    async with Simulator() as sim:
        for method, path in (("GET", "/nope"), ("DELETE", "/users/@me"), ("GET", "/channels/1/pins/x/y")):
            async with http.request(method, sim.api_url + path, headers=AUTH) as response:
                assert response.status == 404
                assert (await response.json())["message"] == "404: Not Found"
        assert sim.stats()["unknown_routes"] == 3


async def test_posting_a_reply_is_recorded_by_the_handling_referee(http: aiohttp.ClientSession) -> None:
    async with Simulator(shards=2, guilds=2, answer_timeout=0.05) as sim, raw_gateway(sim) as gw:
        await gw.recv()
        await gw.identify([0, 2], intents=513 | (1 << 15))
        await gw.recv_until(lambda p: p.get("t") == "READY")
        guild_id = sim.guild_ids(0)[0]
        n = sim.send_ping(guild_id)
        message = await gw.recv_until(lambda p: p.get("t") == "MESSAGE_CREATE")
        assert message["d"]["content"] == f"!ping {n}"
        assert message["d"]["author"].get("bot") is None
        channel = sim.text_channel_id(guild_id)
        url = f"{sim.api_url}/channels/{channel}/messages"
        reply = {"content": "pong", "message_reference": {"message_id": message["d"]["id"]}}
        async with http.post(url, json=reply, headers=AUTH) as response:
            assert response.status == 200
            posted = await response.json()
        assert posted["message_reference"]["message_id"] == message["d"]["id"]
        assert posted["author"]["bot"] is True and posted["channel_id"] == str(channel)
        async with http.post(url, json={"content": f"pong {n}"}, headers=AUTH) as response:  # by content
            assert response.status == 200
        sim.send_ping(sim.guild_ids(1)[0])  # shard 1 has no session
        handling = sim.stats()["handling"]
        assert handling["answered_twice_or_more"] == 1 and handling["undeliverable"] == 1
        async with http.post(f"{sim.api_url}/channels/42/messages", json={"content": "x"}, headers=AUTH) as response:
            assert response.status == 404


async def test_message_content_needs_its_intent() -> None:
    async with Simulator(shards=1, guilds=1) as sim, raw_gateway(sim) as gw:
        await gw.recv()
        await gw.identify([0, 1], intents=513)  # GUILDS | GUILD_MESSAGES, no MESSAGE_CONTENT
        await gw.recv_until(lambda p: p.get("t") == "READY")
        sim.send_ping()
        message = await gw.recv_until(lambda p: p.get("t") == "MESSAGE_CREATE")
        assert message["d"]["content"] == ""


async def test_stats_endpoint_matches_stats_and_reset_zeroes(http: aiohttp.ClientSession) -> None:
    async with Simulator(guilds=4) as sim:
        sim.send_ping()
        async with http.get(sim.base_url + "/_sim/stats") as response:
            assert response.headers["Content-Type"] == "application/json"
            over_http = await response.json()
        in_process = sim.stats()
        over_http.pop("uptime_seconds")
        in_process.pop("uptime_seconds")
        assert over_http == in_process
        assert in_process["handling"]["sent"] == 1
        async with http.post(sim.base_url + "/_sim/reset") as response:
            assert response.status == 200
        assert sim.stats()["handling"]["sent"] == 0


async def test_control_endpoints(http: aiohttp.ClientSession) -> None:
    async with Simulator(shards=2, guilds=2) as sim, raw_gateway(sim) as gw:
        await gw.recv()
        await gw.identify([1, 2])
        await gw.recv_until(lambda p: p.get("t") == "READY")
        guild_id = sim.guild_ids(1)[0]
        body = {"event": "TYPING_START", "guild_id": str(guild_id), "data": {"x": 1}}
        async with http.post(sim.base_url + "/_sim/dispatch", json=body) as response:
            assert await response.json() == {"live": 1, "buffered": 0}
        assert (await gw.recv_until(lambda p: p.get("t") == "TYPING_START"))["d"] == {"x": 1}
        async with http.post(sim.base_url + "/_sim/guilds?count=2") as response:
            assert (await response.json())["guilds"] == 4
        async with http.post(sim.base_url + "/_sim/ping", json={"guild_id": str(guild_id)}) as response:
            assert (await response.json()) == {"n": 1}
        async with http.post(sim.base_url + "/_sim/shards/1/reconnect") as response:
            assert (await response.json())["sessions"] == 1
        assert (await gw.recv_until(lambda p: p.get("op") == 7))["op"] == 7
        async with http.post(sim.base_url + "/_sim/traffic?rate=100&seconds=0.03") as response:
            assert (await response.json())["traffic"] is True
        async with http.post(sim.base_url + "/_sim/traffic/stop") as response:
            assert response.status == 200


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/_sim/shards/9/drop", None, "shard_id 9"),
        ("/_sim/shards/x/drop", None, "shard id"),
        ("/_sim/dispatch", {"guild_id": "1"}, "event"),
        ("/_sim/dispatch", {"event": "X"}, "guild_id or shard_id"),
        ("/_sim/chaos?seconds=abc", None, "seconds"),
        ("/_sim/traffic?rate=0", None, "rate"),
        ("/_sim/guilds?count=-1", None, "count"),
        ("/_sim/shards/0/drop?num_shards=0", None, "num_shards"),
    ],
)
async def test_bad_control_input_is_a_clear_400(
    http: aiohttp.ClientSession, path: str, body: dict | None, needle: str
) -> None:
    async with Simulator(shards=2, guilds=2) as sim:
        async with http.post(sim.base_url + path, json=body) as response:
            assert response.status == 400
            assert needle in (await response.json())["error"]


async def test_an_interaction_is_answered_once(http: aiohttp.ClientSession) -> None:
    """Like Discord: the first callback of an interaction is accepted, a second one fails with 40060."""
    async with Simulator() as sim:
        url = sim.api_url + "/interactions/1234/some-interaction-token/callback"
        async with http.post(url, json={"type": 4, "data": {"content": "pong"}}) as response:
            assert response.status == 204
        async with http.post(url, json={"type": 4, "data": {"content": "pong"}}) as response:
            assert response.status == 400 and (await response.json())["code"] == 40060
        stats = sim.stats()
        assert (stats["interaction_callbacks"], stats["interaction_already_acknowledged"]) == (1, 1)
