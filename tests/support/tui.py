"""Shared helpers of the dashboard tests: seeding, an app factory, a fake host inbox that answers commands."""

from __future__ import annotations

from typing import Any

from letsfrag.bus import Bus
from letsfrag.clock import FakeClock
from letsfrag.connection import create_redis
from letsfrag.contract.envelope import Envelope
from letsfrag.tui.app import LetsfragTop
from support.seed import NOW, Seeded, seed

SIZE = (160, 45)


async def seed_url(url: str, **kwargs: Any) -> Seeded:
    redis = create_redis(url)
    try:
        return await seed(redis, **kwargs)
    finally:
        await redis.aclose()


def make_app(url: str, **kwargs: Any) -> LetsfragTop:
    """An app with a frozen clock at the seed's NOW and a fixed address label (deterministic screens)."""
    kwargs.setdefault("refresh", 0.2)
    return LetsfragTop(url, clock=FakeClock(wall=NOW), address="redis://test", utc=True, **kwargs)


class FakeInbox:
    """A bus node that answers ``command`` requests on one channel and records their payloads."""

    def __init__(self, url: str, channel_of: Any, node: str, reply: dict[str, Any]) -> None:
        # a broker answers commands addressed to "broker" only while it leads; this one always does
        self.bus = Bus(url, node_id=node, aliases=("broker",) if node.startswith("broker:") else ())
        self.channel = channel_of(self.bus.keys)
        self.reply = reply
        self.received: list[dict[str, Any]] = []

    async def _handle(self, env: Envelope) -> dict[str, Any]:
        self.received.append(env.payload)
        return self.reply

    async def __aenter__(self) -> FakeInbox:
        await self.bus.subscribe(self.channel, self._handle)
        await self.bus.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bus.close()
