"""The main screen: summary header, hosts table, clusters table, events pane, and the filter line."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label

from ...snapshot.picture import Snapshot
from ...snapshot.render import CLUSTER_SORTS, cluster_cells, host_cells, matches
from ..dashboard import Dashboard
from ..widgets.events_pane import EventsPane
from ..widgets.header import ConnectionBanner, SummaryHeader
from ..widgets.tables import ClustersTable, HostsTable

SORTS = list(CLUSTER_SORTS)


class MainScreen(Screen[None]):
    """Everything at a glance; ``enter`` on a cluster opens its screen."""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("e", "problems", "Problems"),
        Binding("p", "pause", "Pause"),
        Binding("r", "restart_cluster", "Restart"),
        Binding("R", "rolling_restart", "Rolling restart host"),
        Binding("d", "drain", "Drain host"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.needle = ""
        self.sort_index = 0
        self.problems_only = False
        self.paused = False
        self._clusters_title = ""

    @property
    def top(self) -> Dashboard:
        """The app, as a screen sees it."""
        assert isinstance(self.app, Dashboard)
        return self.app

    def compose(self) -> ComposeResult:
        yield SummaryHeader(id="summary")
        yield ConnectionBanner(id="banner")
        with Vertical(id="hosts-box"):
            yield Label("Hosts", classes="section")
            yield HostsTable(id="hosts")
        with Vertical(id="clusters-box"):
            yield Label("Clusters", id="clusters-title", classes="section")
            yield ClustersTable(id="clusters")
        with Vertical(id="events-box"):
            yield Label("Events", classes="section")
            yield EventsPane(id="events", utc=self.top.utc)
        yield Input(placeholder="filter: host, cluster, state, error…  (enter: keep, escape: clear)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#banner", ConnectionBanner).display = False
        self.query_one("#filter", Input).display = False
        self.query_one("#clusters", ClustersTable).focus()
        self.refresh_view()

    # ------------------------------------------------------------------------------------------- rendering

    def refresh_view(self, *, force: bool = False) -> None:
        """Apply the source's state: header and banner always, tables unless paused (or ``force``)."""
        try:
            self._refresh_view(force)
        except NoMatches:  # not composed yet, or being torn down at exit
            pass

    def _refresh_view(self, force: bool) -> None:
        app = self.top
        source = app.source
        snapshot = source.snapshot
        self.query_one("#summary", SummaryHeader).show(
            snapshot, app.address, connected=source.connected, data_age=source.data_age(), paused=self.paused,
            extra=self._view_label())
        self.query_one("#banner", ConnectionBanner).show(
            source.error, app.address, down_for=source.down_for(), data_age=source.data_age())
        if snapshot is not None and (force or not self.paused):
            self._show_tables(snapshot)

    def _view_label(self) -> str:
        parts = [f"sort: {SORTS[self.sort_index]}"]
        if self.problems_only:
            parts.append("problems only")
        if self.needle:
            parts.append(f"filter: {self.needle}")
        if self.top.readonly:
            parts.append("read-only")
        return " · ".join(parts)

    def _show_tables(self, snapshot: Snapshot) -> None:
        # without a filter the tables get the rows themselves and format only what is on screen
        needle = self.needle.lower()
        hosts = [host for host in snapshot.hosts if not self.problems_only or host.problem]
        hosts_table = self.query_one("#hosts", HostsTable)
        if needle:
            hosts_table.sync([(host.id, cells) for host in hosts if matches(cells := host_cells(host), needle)])
        else:
            hosts_table.sync([(host.id, host) for host in hosts], host_cells)
        clusters = sorted((cluster for cluster in snapshot.clusters if not self.problems_only or cluster.problem),
                          key=CLUSTER_SORTS[SORTS[self.sort_index]])
        clusters_table = self.query_one("#clusters", ClustersTable)
        shown: list[tuple[str, Any]]
        if needle:
            shown = [(str(cluster.id), cells) for cluster in clusters
                     if matches(cells := cluster_cells(cluster), needle)]
            clusters_table.sync(shown)
        else:
            shown = [(str(cluster.id), cluster) for cluster in clusters]
            clusters_table.sync(shown, cluster_cells)
        title = f"Clusters ({len(shown)} of {len(snapshot.clusters)} shown)"
        if title != self._clusters_title:  # an update re-lays out the screen: only when it changed
            self._clusters_title = title
            self.query_one("#clusters-title", Label).update(title)
        self.query_one("#events", EventsPane).show(snapshot.events)

    # --------------------------------------------------------------------------------------------- actions

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.needle = event.value.strip()
        self.refresh_view(force=True)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = bool(self.needle)
        self.query_one("#clusters", ClustersTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.needle = ""
        self.query_one("#clusters", ClustersTable).focus()
        self.refresh_view(force=True)

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self.refresh_view(force=True)

    def action_problems(self) -> None:
        self.problems_only = not self.problems_only
        self.refresh_view(force=True)

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.refresh_view(force=not self.paused)

    def selected_cluster(self) -> int | None:
        key = self.query_one("#clusters", ClustersTable).selected_key
        return int(key) if key is not None else None

    def selected_host(self) -> str | None:
        """The host under the cursor when the hosts table has focus, else the selected cluster's host."""
        hosts = self.query_one("#hosts", HostsTable)
        if hosts.has_focus:
            return hosts.selected_key
        cluster = self.selected_cluster()
        snapshot = self.top.source.snapshot
        if cluster is None or snapshot is None:
            return None
        return next((c.host for c in snapshot.clusters if c.id == cluster), None)

    def action_restart_cluster(self) -> None:
        cluster = self.selected_cluster()
        if cluster is None:
            self.notify("select a cluster first", severity="warning")
            return
        self.top.confirm_restart_cluster(cluster)

    def action_rolling_restart(self) -> None:
        host = self.selected_host()
        if host is None:
            self.notify("select a host (or a cluster on it) first", severity="warning")
            return
        self.top.confirm_host_action("rolling_restart", host)

    def action_drain(self) -> None:
        host = self.selected_host()
        if host is None:
            self.notify("select a host (or a cluster on it) first", severity="warning")
            return
        self.top.confirm_host_action("drain", host)

    @on(DataTable.RowSelected, "#clusters")
    def _open_cluster(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.top.open_cluster(int(event.row_key.value))
