"""Fixtures of the broker tests: fake hosts and brokers that are always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from support.broker import TOKEN, Deployment, Stub

from letsfrag.redis_server import free_port


@pytest.fixture
async def deployment(redis_url: str) -> AsyncIterator[Deployment]:
    dep = Deployment(redis_url)
    try:
        yield dep
    finally:
        await dep.close()


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    """A tiny aiohttp stub of Discord's ``GET /gateway/bot`` (401 without ``Bot`` :data:`TOKEN`)."""
    state = Stub()

    async def gateway_bot(request: web.Request) -> web.Response:
        state.calls.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bot {TOKEN}":
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)
        return web.json_response({"url": "wss://gateway", "shards": state.shards, "session_start_limit": {
            "total": 1000, "remaining": 990, "reset_after": 60_000, "max_concurrency": state.max_concurrency}})

    app = web.Application()
    app.router.add_get("/api/v10/gateway/bot", gateway_bot)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    state.url = f"http://127.0.0.1:{port}/api/v10"
    try:
        yield state
    finally:
        await runner.cleanup()
