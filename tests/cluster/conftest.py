"""Fixtures of the cluster tests: discord.py's process-wide settings restored after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.cluster import discord_settings_restored


@pytest.fixture(autouse=True)
def restore_discord() -> Iterator[None]:
    """The client sets ``Route.BASE``, ``DEFAULT_GATEWAY`` and ``discord.shard.DiscordWebSocket``; undo them."""
    with discord_settings_restored():
        yield
