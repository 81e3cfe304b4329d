"""Pilot tests of letsfrag-top against a real redis-server seeded with 3 hosts and 12 clusters."""

from __future__ import annotations

from rich.text import Text
from support.seed import HOSTILE, HOSTILE_SHOWN, NOW, seed_handover, seed_hostile
from support.tui import SIZE, FakeInbox, make_app, seed_url
from support.waiting import wait_until
from textual.widgets import Input, Label, Static

from letsfrag.connection import create_redis
from letsfrag.redis_server import RedisServer
from letsfrag.tui.screens.cluster import ClusterScreen
from letsfrag.tui.screens.confirm import ConfirmScreen
from letsfrag.tui.widgets.events_pane import EventsPane
from letsfrag.tui.widgets.header import ConnectionBanner, SummaryHeader
from letsfrag.tui.widgets.tables import ClustersTable, HostsTable, RestartsTable, ShardsTable


def _clusters(app) -> ClustersTable:  # type: ignore[no-untyped-def]
    return app.main_screen.query_one("#clusters", ClustersTable)


async def _loaded(app, pilot) -> None:  # type: ignore[no-untyped-def]
    await wait_until(lambda: app.reads >= 1 and len(_clusters(app).row_keys) > 0, message="first snapshot")
    await pilot.pause()


async def test_rows_ranges_states_and_header(redis_url: str) -> None:
    await seed_url(redis_url)
    app = make_app(redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(app, pilot)
        table = _clusters(app)
        assert table.row_keys == [str(i) for i in range(12)]
        assert str(table.cells_of("3")[2]) == "12–15"  # type: ignore[index]
        failed = table.cells_of("4")
        assert failed is not None and str(failed[4]) == "failed" and "JSONDecodeError" in str(failed[-1])
        unassigned = table.cells_of("11")
        assert unassigned is not None and str(unassigned[4]) == "unassigned"
        assert isinstance(unassigned[0], Text) and "red" in str(unassigned[0].style)
        hosts = app.main_screen.query_one("#hosts", HostsTable)
        assert hosts.row_keys == ["host-01", "host-02", "host-03"]
        header = str(app.main_screen.query_one("#summary", SummaryHeader).render())
        for part in ("leader broker-a", "hosts 3/3", "clusters 10/12", "shards 40/48", "identify queue 2"):
            assert part in header, header
        events = app.main_screen.query_one("#events", EventsPane)
        first = events.cells_of(events.row_keys[0])
        assert first is not None and "cluster 11 has no host" in str(first[3])


async def test_filter_sort_and_problems(redis_url: str) -> None:
    await seed_url(redis_url)
    app = make_app(redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(app, pilot)
        await pilot.press("slash")
        assert app.main_screen.query_one("#filter", Input).has_focus
        await pilot.press(*"host-02")
        await pilot.pause()
        assert _clusters(app).row_keys == ["1", "4", "7", "10"]
        assert app.main_screen.query_one("#hosts", HostsTable).row_keys == ["host-02"]
        await pilot.press("escape")
        await pilot.pause()
        assert len(_clusters(app).row_keys) == 12
        await pilot.press("e")
        await pilot.pause()
        problems = _clusters(app).row_keys
        assert "4" in problems and "11" in problems and "1" not in problems
        await pilot.press("e", "s")  # sort by state: unassigned, then failed first
        await pilot.pause()
        assert _clusters(app).row_keys[:2] == ["11", "4"]


async def test_enter_opens_cluster_screen_with_traceback(redis_url: str) -> None:
    await seed_url(redis_url)
    app = make_app(redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(app, pilot)
        _clusters(app).move_cursor(row=4)
        await pilot.press("enter")
        await wait_until(lambda: isinstance(app.screen, ClusterScreen) and app.screen.detail is not None)
        screen = app.screen
        assert isinstance(screen, ClusterScreen) and screen.cluster_id == 4
        await pilot.pause()
        errors = str(screen.query_one("#errors", Static).render())
        assert "Traceback (most recent call last)" in errors and "load_playlists" in errors
        assert len(screen.query_one("#restarts", RestartsTable).row_keys) == 6
        assert screen.query_one("#shards", ShardsTable).row_keys == ["16", "17", "18", "19"]
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main_screen


async def test_restart_asks_then_sends_the_command(redis_url: str) -> None:
    await seed_url(redis_url)
    reply = {"ok": True, "message": "restarting cluster 4"}
    async with FakeInbox(redis_url, lambda k: k.host_inbox("host-02"), "host:host-02", reply) as inbox:
        app = make_app(redis_url)
        async with app.run_test(size=SIZE) as pilot:
            await _loaded(app, pilot)
            _clusters(app).move_cursor(row=4)
            await pilot.press("r")
            await wait_until(lambda: isinstance(app.screen, ConfirmScreen), message="confirmation")
            assert inbox.received == []
            await pilot.press("y")
            await wait_until(lambda: inbox.received, message="restart command")
            assert inbox.received == [{"action": "restart", "cluster": 4}]
            await wait_until(lambda: any("restarting cluster 4" in n.message for n in app._notifications),
                             message="outcome notification")


async def test_drain_answer_no_sends_nothing(redis_url: str) -> None:
    await seed_url(redis_url)
    async with FakeInbox(redis_url, lambda k: k.broker_inbox, "broker:a", {"ok": True, "message": "x"}) as inbox:
        app = make_app(redis_url)
        async with app.run_test(size=SIZE) as pilot:
            await _loaded(app, pilot)
            _clusters(app).move_cursor(row=1)
            await pilot.press("d")
            await wait_until(lambda: isinstance(app.screen, ConfirmScreen), message="confirmation")
            await pilot.press("n")
            await pilot.press("d")
            await wait_until(lambda: isinstance(app.screen, ConfirmScreen), message="confirmation")
            await pilot.press("y")
            await wait_until(lambda: inbox.received, message="drain command")
            assert inbox.received == [{"action": "drain", "host": "host-02"}]


async def test_readonly_refuses_actions(redis_url: str) -> None:
    await seed_url(redis_url)
    reply = {"ok": True, "message": "restarting"}
    async with FakeInbox(redis_url, lambda k: k.host_inbox("host-02"), "host:host-02", reply) as inbox:
        app = make_app(redis_url, readonly=True)
        async with app.run_test(size=SIZE) as pilot:
            await _loaded(app, pilot)
            _clusters(app).move_cursor(row=4)
            await pilot.press("r", "R", "d")
            await pilot.pause()
            assert not isinstance(app.screen, ConfirmScreen)
            messages = [n.message for n in app._notifications]
            assert sum("read-only" in m for m in messages) == 3, messages
            assert inbox.received == []


async def test_redis_outage_shows_banner_and_recovers(redis_server: RedisServer) -> None:
    await seed_url(redis_server.url)
    app = make_app(redis_server.url, refresh=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(app, pilot)
        banner = app.main_screen.query_one("#banner", ConnectionBanner)
        assert not banner.display
        redis_server.stop()
        await wait_until(lambda: banner.display, message="outage banner")
        assert "unreachable" in str(banner.render())
        assert len(_clusters(app).row_keys) == 12  # the last data stays on screen
        redis_server.start()
        await seed_url(redis_server.url, clusters=8)
        await wait_until(lambda: not banner.display and len(_clusters(app).row_keys) == 8, message="recovery")
        assert app.source.connected


async def test_hostile_strings_from_redis_render_literally(redis_url: str) -> None:
    await seed_url(redis_url)
    redis = create_redis(redis_url)
    try:
        await seed_hostile(redis)
    finally:
        await redis.aclose()
    app = make_app(redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(app, pilot)
        hosts = app.main_screen.query_one("#hosts", HostsTable)
        await wait_until(lambda: HOSTILE in hosts.row_keys, message="the hostile host listed")
        host_row = hosts.cells_of(HOSTILE)
        assert host_row is not None and [str(c) for c in host_row[:2]] == [HOSTILE_SHOWN, HOSTILE_SHOWN]
        row = _clusters(app).cells_of("4")
        first_line = HOSTILE_SHOWN.split("\\n")[0]  # the table shows an error's first line
        assert row is not None and str(row[1]) == HOSTILE_SHOWN and str(row[-1]) == first_line
        events = app.main_screen.query_one("#events", EventsPane)
        shown = [events.cells_of(key) for key in events.row_keys]
        assert any(c is not None and str(c[2]) == f"host:{HOSTILE_SHOWN}" and str(c[3]) == HOSTILE_SHOWN
                   for c in shown)
        await pilot.pause()
        assert "\x1b" not in app.export_screenshot()

        _clusters(app).move_cursor(row=4)
        await pilot.press("enter")
        await wait_until(lambda: isinstance(app.screen, ClusterScreen) and app.screen.detail is not None)
        await pilot.pause()
        screen = app.screen
        traceback = HOSTILE_SHOWN.replace("\\n", "\n")  # the errors pane keeps line breaks, escapes the rest
        assert f"Traceback\n{traceback}" in str(screen.query_one("#errors", Static).render())
        title = str(screen.query_one("#cluster-title", Static).render())
        assert f"host {HOSTILE_SHOWN}" in title and f"reason: {HOSTILE_SHOWN}" in title
        restarts = screen.query_one("#restarts", RestartsTable)
        assert str(restarts.cells_of(restarts.row_keys[0])[2]) == HOSTILE_SHOWN  # type: ignore[index]
        assert "\x1b" not in app.export_screenshot()

        await pilot.press("escape")
        await pilot.pause()
        _clusters(app).move_cursor(row=4)
        await pilot.press("d")  # the question names the cluster's (hostile) host
        await wait_until(lambda: isinstance(app.screen, ConfirmScreen), message="drain question")
        await pilot.pause()
        question = str(app.screen.query_one("#question", Label).render())
        assert question == f"Drain {HOSTILE_SHOWN}? Its clusters move to other hosts."
        assert "\x1b" not in app.export_screenshot()
        await pilot.press("n")


async def test_a_handover_and_a_rolling_restart_are_shown(redis_url: str) -> None:
    await seed_url(redis_url, healthy=True)
    redis = create_redis(redis_url)
    try:
        await seed_handover(redis, now=NOW)
    finally:
        await redis.aclose()
    app = make_app(redis_url)
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(app, pilot)
        moving = [str(cell) for cell in _clusters(app).cells_of("5") or ()]
        assert moving[1] == "host-03 → host-01" and moving[4] == "handing over" and moving[5] == "10005 → 20005"
        assert moving[-1].startswith("rolling to host-01 epoch 20, successor ready")
        switching = [str(cell) for cell in _clusters(app).cells_of("2") or ()]
        assert switching[4] == "switching" and switching[5] == "– → 20002"
        header = str(app.main_screen.query_one("#summary", SummaryHeader).render())
        assert "rolling restart of host-03: 2 of 4" in header and "handovers 2" in header, header
        hosts = app.main_screen.query_one("#hosts", HostsTable)
        assert str((hosts.cells_of("host-01") or ())[4]) == "4+1/4"
        _clusters(app).move_cursor(row=5)
        await pilot.press("enter")
        await wait_until(lambda: isinstance(app.screen, ClusterScreen) and app.screen.detail is not None)
        await pilot.pause()
        title = str(app.screen.query_one("#cluster-title", Static).render())
        assert "handing over" in title and "host-03 pid 10005 epoch 6 → host-01 pid 20005 epoch 20" in title
