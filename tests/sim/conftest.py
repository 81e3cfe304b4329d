"""Fixtures of the simulator tests."""

from __future__ import annotations

from collections.abc import Callable

import discord
import pytest
import yarl

from letsfrag.sim import Simulator


@pytest.fixture
def point_discord(monkeypatch: pytest.MonkeyPatch) -> Callable[[Simulator], None]:
    """Point discord.py's REST base and default gateway at a simulator (restored after the test)."""

    def point(sim: Simulator) -> None:
        monkeypatch.setattr(discord.http.Route, "BASE", sim.api_url)
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(sim.gateway_url))

    return point
