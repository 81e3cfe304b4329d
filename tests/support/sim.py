"""Helpers for the simulator tests: real discord.py clients pointed at a Simulator, and a raw gateway client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord

from letsfrag.sim import Simulator
from letsfrag.sim.sessions import Session
from support.waiting import scaled


class FastClient(discord.AutoShardedClient):
    """An AutoShardedClient that records what happened and identifies without discord.py's 5 s pacing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("guild_ready_timeout", 0.1)
        super().__init__(*args, **kwargs)
        self.shards_ready: list[int] = []
        self.shards_resumed: list[int] = []
        self.ready_count = 0
        self.messages: list[discord.Message] = []
        self.reply_to_pings = False

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        pass

    async def on_shard_ready(self, shard_id: int) -> None:
        self.shards_ready.append(shard_id)

    async def on_shard_resumed(self, shard_id: int) -> None:
        self.shards_resumed.append(shard_id)

    async def on_ready(self) -> None:
        self.ready_count += 1

    async def on_member_join(self, member: discord.Member) -> None:
        if self.reply_to_pings and member.guild.system_channel is not None:
            await member.guild.system_channel.send(f"welcome {member.name}")

    async def on_message(self, message: discord.Message) -> None:
        self.messages.append(message)
        if self.reply_to_pings and message.content.startswith("!ping "):
            await message.reply("pong " + message.content.split()[1])


def intents(*, members: bool = False, message_content: bool = True) -> discord.Intents:
    """Default intents plus the privileged ones asked for."""
    value = discord.Intents.default()
    value.members = members
    value.message_content = message_content
    return value


@contextlib.asynccontextmanager
async def running(client: discord.Client, token: str = "test-token") -> AsyncIterator[asyncio.Task[None]]:
    """Run ``client.start(token)`` in a task; close the client and collect the task on exit."""
    task = asyncio.create_task(client.start(token))
    try:
        yield task
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=scaled(10))


class ZlibContext:
    """discord.py's own zlib-stream decompression context (used when zstandard is absent), copied."""

    COMPRESSION_TYPE = "zlib-stream"

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.context = zlib.decompressobj()

    def decompress(self, data: bytes, /) -> str | None:
        self.buffer.extend(data)
        if len(data) < 4 or data[-4:] != b"\x00\x00\xff\xff":
            return None
        msg = self.context.decompress(self.buffer)
        self.buffer = bytearray()
        return msg.decode("utf-8")


class RawGateway:
    """A hand-driven gateway connection (plain JSON text frames or zlib-stream) for protocol tests."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, zlib_stream: bool):
        self.session = session
        self.ws = ws
        self.inflater = ZlibContext() if zlib_stream else None
        self.raw_frames: list[bytes] = []

    @classmethod
    async def connect(cls, sim: Simulator, query: str = "v=10&encoding=json", zlib_stream: bool = False) -> RawGateway:
        session = aiohttp.ClientSession()
        if zlib_stream:
            query += "&compress=zlib-stream"
        ws = await session.ws_connect(f"{sim.gateway_url}?{query}", autoclose=False)
        return cls(session, ws, zlib_stream)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next gateway payload; raises ConnectionError carrying the close code when closed."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type is aiohttp.WSMsgType.TEXT:
                return json.loads(msg.data)
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.raw_frames.append(msg.data)
                assert self.inflater is not None, "binary frame on an uncompressed connection"
                text = self.inflater.decompress(msg.data)
                if text is not None:
                    return json.loads(text)
                continue
            raise ConnectionError(msg.data if msg.type is aiohttp.WSMsgType.CLOSE else None)

    async def recv_until(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        """Skip payloads until ``predicate(payload)`` holds."""
        async with asyncio.timeout(timeout):
            while True:
                payload = await self.recv(timeout)
                if predicate(payload):
                    return payload

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes; return its close code."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.recv(timeout)
        except ConnectionError as exc:
            return exc.args[0] if exc.args else None

    async def send(self, op: int, data: Any) -> None:
        await self.ws.send_str(json.dumps({"op": op, "d": data}))

    async def identify(self, shard: list[int] | None, *, token: str = "test-token", intents: int = 513) -> None:
        data: dict[str, Any] = {"token": token, "intents": intents, "properties": {}}
        if shard is not None:
            data["shard"] = shard
        await self.send(2, data)

    async def close(self, code: int = 4000) -> None:
        """Close like discord.py does (4000: the session stays resumable)."""
        with contextlib.suppress(Exception):
            await self.ws.close(code=code)
        await self.session.close()


@contextlib.asynccontextmanager
async def raw_gateway(sim: Simulator, **kwargs: Any) -> AsyncIterator[RawGateway]:
    """A connected :class:`RawGateway` that is closed on exit."""
    gateway = await RawGateway.connect(sim, **kwargs)
    try:
        yield gateway
    finally:
        await gateway.close()


class FakeLink:
    """A Link without a socket."""

    def __init__(self, now: float) -> None:
        self.conn_id = 1
        self.last_heartbeat = now
        self.closing = False
        self.session: Session | None = None
        self.sent: list[str] = []
        self.closed_with: tuple[int, str] | None = None

    def send(self, frame: str) -> None:
        self.sent.append(frame)

    def close(self, code: int, reason: str = "") -> None:
        self.closing = True
        self.closed_with = (code, reason)

    def abort(self) -> None:
        self.closing = True
