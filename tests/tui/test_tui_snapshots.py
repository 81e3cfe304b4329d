"""Screenshot tests (pytest-textual-snapshot) of the main and cluster screens, with a frozen clock.

Update after an intended visual change: ``pytest tests/tui/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from support.tui import SIZE, make_app, seed_url
from support.waiting import scaled

from letsfrag.redis_server import RedisServer
from letsfrag.tui.screens.cluster import ClusterScreen
from letsfrag.tui.widgets.tables import ClustersTable


@pytest.fixture
def seeded_url(redis_server: RedisServer) -> str:
    asyncio.run(seed_url(redis_server.url))
    return redis_server.url


async def _wait(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the dashboard")
        await asyncio.sleep(0.02)


def test_main_screen(snap_compare: Any, seeded_url: str) -> None:
    app = make_app(seeded_url, refresh=3600)

    async def loaded(pilot: Any) -> None:
        await _wait(lambda: app.reads >= 1)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=loaded)


def test_cluster_screen(snap_compare: Any, seeded_url: str) -> None:
    app = make_app(seeded_url, refresh=3600)

    async def open_failed_cluster(pilot: Any) -> None:
        await _wait(lambda: app.reads >= 1)
        await pilot.pause()
        app.main_screen.query_one("#clusters", ClustersTable).move_cursor(row=4)
        await pilot.press("enter")
        await _wait(lambda: isinstance(app.screen, ClusterScreen) and app.screen.detail is not None)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_failed_cluster)
