"""The cluster screen: shards, CPU/RSS sparklines, restart history and recent errors with tracebacks."""

from __future__ import annotations

import time

from redis.exceptions import RedisError
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Label, Static

from ...logs import escape_control
from ...snapshot.picture import ClusterDetail
from ...snapshot.render import handover_text, plain, plain_lines, state_style
from ...units import format_duration, format_size
from ..dashboard import Dashboard
from ..widgets.header import ConnectionBanner
from ..widgets.sparklines import LabelledSparkline
from ..widgets.tables import RestartsTable, ShardsTable


def _dur(value: float | None) -> str:
    return "–" if value is None else format_duration(value)


class ClusterScreen(Screen[None]):
    """One cluster in depth, refreshed at the dashboard's interval."""

    BINDINGS = [
        Binding("escape,backspace", "back", "Back"),
        Binding("r", "restart", "Restart cluster"),
    ]

    def __init__(self, cluster_id: int) -> None:
        super().__init__()
        self.cluster_id = cluster_id
        self.detail: ClusterDetail | None = None
        self._loading = False

    @property
    def top(self) -> Dashboard:
        """The app, as a screen sees it."""
        assert isinstance(self.app, Dashboard)
        return self.app

    def compose(self) -> ComposeResult:
        yield Static(f"cluster {self.cluster_id}: loading…", id="cluster-title")
        yield ConnectionBanner(id="cluster-banner")
        with Horizontal(id="cluster-top"):
            with Vertical(id="shards-box"):
                yield Label("Shards", classes="section")
                yield ShardsTable(id="shards")
            with Vertical(id="side-box"):
                yield LabelledSparkline("CPU %", lambda v: f"{v:.1f}", id="cpu")
                yield LabelledSparkline("RSS", format_size, id="rss")
                yield Label("Restarts", classes="section")
                yield RestartsTable(id="restarts")
        yield Label("Recent errors", classes="section")
        with VerticalScroll(id="errors-box"):
            yield Static("", id="errors")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#cluster-banner", ConnectionBanner).display = False
        self.set_interval(self.top.refresh_interval, self.reload)
        self.reload()

    def reload(self) -> None:
        if not self._loading:
            self._loading = True
            self._load()

    @work(group="cluster-detail")
    async def _load(self) -> None:
        try:
            detail = await self.top.source.detail(self.cluster_id)
        except (RedisError, OSError):
            detail = None
        finally:
            self._loading = False
        self._show(detail)

    def _show(self, detail: ClusterDetail | None) -> None:
        try:
            self._render_detail(detail)
        except NoMatches:  # the screen was closed while the read was running
            pass

    def _render_detail(self, detail: ClusterDetail | None) -> None:
        source = self.top.source
        self.query_one("#cluster-banner", ConnectionBanner).show(
            source.error, self.top.address, down_for=source.down_for(), data_age=source.data_age())
        if detail is None:
            return
        self.detail = detail
        c = detail.cluster
        title = Text(f"cluster {c.id}", style="bold")
        title.append(f"  shards {escape_control(c.shard_range)}  host {escape_control(c.host or '–')}  "
                     f"epoch {c.epoch if c.epoch else '–'}  ")
        title.append(plain(c.state, style=state_style(c.state)))
        title.append(f"  pid {c.pid or '–'}  restarts {c.restarts}  uptime {_dur(c.uptime)}  ")
        title.append(f"heartbeat {_dur(c.heartbeat_age)}", style=c.heartbeat_colour)
        if c.reason:
            title.append(plain(f"  reason: {c.reason}", style="yellow"))
        if c.handover is not None:
            h = c.handover
            title.append("\n")
            title.append(plain(h.state, style=state_style(h.state)))
            title.append(plain(f"  {h.from_host} pid {h.old_pid or '–'} epoch {h.from_epoch} → {h.host} pid "
                               f"{h.new_pid or '–'} epoch {h.epoch}  ({handover_text(h)})"))
        self.query_one("#cluster-title", Static).update(title)
        self.query_one("#shards", ShardsTable).sync([
            (str(s.id), (str(s.id), plain(s.status, style=_shard_style(s.status)),
                         "–" if s.latency is None else f"{s.latency * 1000:.0f}ms",
                         "–" if s.guilds is None else str(s.guilds), _dur(s.last_event_age), _dur(s.report_age)))
            for s in c.shards
        ])
        self.query_one("#cpu", LabelledSparkline).show(detail.cpu_series)
        self.query_one("#rss", LabelledSparkline).show(detail.rss_series)
        now = self.top.clock.time()
        restarts = []
        for n, item in enumerate(detail.restarts):
            ts = float(item.get("ts") or 0)
            code, sig = item.get("exit_code"), item.get("exit_signal")
            restarts.append((f"r{n}", (str(len(detail.restarts) - n), f"{_dur(max(0.0, now - ts))} ago",
                                       plain(item.get("reason", "")), plain(code if code is not None else sig or "–"),
                                       _dur(float(item["delay"])) if item.get("delay") is not None else "–")))
        self.query_one("#restarts", RestartsTable).sync(restarts)
        errors = Text()
        for item in detail.errors:
            ts = float(item.get("ts") or 0)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts) if self.top.utc else time.localtime(ts))
            errors.append(f"── {stamp} ({_dur(max(0.0, now - ts))} ago)\n", style="bold red")
            errors.append(plain_lines(str(item.get("text", "")).rstrip()))
            errors.append("\n\n")
        if not detail.errors:
            errors.append("no errors recorded", style="green")
        self.query_one("#errors", Static).update(errors)

    def action_back(self) -> None:
        self.dismiss(None)

    def action_restart(self) -> None:
        self.top.confirm_restart_cluster(self.cluster_id)


def _shard_style(status: str) -> str:
    return {"ready": "green", "down": "bold red", "disconnected": "red", "resuming": "yellow",
            "identifying": "cyan", "connecting": "cyan"}.get(status, "")

