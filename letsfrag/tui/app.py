"""``letsfrag-top``: a live dashboard of the whole deployment (``letsfrag top`` runs the same app).

The app reads snapshots in a worker at the refresh interval (a slow read is never stacked), applies them by
diffing table rows, keeps running while Redis is away (banner + data age) and recovers by itself. Destructive
actions ask first, are refused with ``--readonly``, and go through :class:`~letsfrag.cli.control.Control`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.message import Message

from ..bus import Bus
from ..cli.connect import connection_from_args, tool_node_id
from ..cli.control import Control
from ..clock import Clock, SystemClock
from ..config import RedisSettings
from ..errors import BusError, ConfigError
from ..logs import escape_control
from ..snapshot.picture import Snapshot
from ..units import parse_duration
from .data_source import DataSource
from .screens.cluster import ClusterScreen
from .screens.confirm import ConfirmScreen
from .screens.help import HelpScreen
from .screens.overview import MainScreen

if TYPE_CHECKING:
    from .dashboard import Dashboard

__all__ = ["LetsfragTop", "build_parser", "main", "run_from_args"]


class SnapshotLoaded(Message):
    """A read succeeded."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class SnapshotFailed(Message):
    """A read failed (Redis unreachable); the source holds the error."""


class LetsfragTop(App[None]):
    """The dashboard. ``clock`` and ``address`` make screenshots deterministic in tests."""

    CSS_PATH = "app.tcss"
    TITLE = "letsfrag-top"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(self, redis: RedisSettings | str, *, namespace: str = "letsfrag", secret: str | None = None,
                 readonly: bool = False, refresh: float = 1.0, clock: Clock | None = None,
                 address: str | None = None, utc: bool = False, command_timeout: float = 60.0) -> None:
        super().__init__()
        self.clock = clock or SystemClock()
        self.source = DataSource(redis, namespace, clock=self.clock)
        self.address = address or self.source.address
        self.redis_settings = redis
        self.namespace = namespace
        self.secret = secret
        self.readonly = readonly
        self.refresh_interval = refresh
        self.utc = utc
        self.command_timeout = command_timeout
        self.reads = 0
        self.failures = 0
        self._reading = False
        self._bus: Bus | None = None
        self.main_screen = MainScreen()

    # ---------------------------------------------------------------------------------------------- reading

    def on_mount(self) -> None:
        self.push_screen(self.main_screen)
        self.set_interval(self.refresh_interval, self.request_read)
        self.request_read()

    def request_read(self) -> None:
        """Start a read unless one is still running."""
        if not self._reading:
            self._reading = True
            self._read()

    @work(group="read")
    async def _read(self) -> None:
        try:
            snapshot = await self.source.read()
        except (RedisError, OSError):
            self.post_message(SnapshotFailed())
        else:
            self.post_message(SnapshotLoaded(snapshot))
        finally:
            self._reading = False

    @on(SnapshotLoaded)
    def _loaded(self) -> None:
        self.reads += 1
        self.main_screen.refresh_view()

    @on(SnapshotFailed)
    def _failed(self) -> None:
        self.failures += 1
        self.main_screen.refresh_view()

    async def on_unmount(self) -> None:
        if self._bus is not None:
            await self._bus.close()
        await self.source.close()

    # ---------------------------------------------------------------------------------------------- screens

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def open_cluster(self, cluster_id: int) -> None:
        self.push_screen(ClusterScreen(cluster_id))

    # ---------------------------------------------------------------------------------------------- actions

    def _refuse_readonly(self, what: str) -> bool:
        if self.readonly:
            self.notify(escape_control(f"read-only: {what} refused (started with --readonly)"), severity="error",
                        markup=False)
        return self.readonly

    def confirm_restart_cluster(self, cluster_id: int) -> None:
        """Ask, then send ``restart`` for ``cluster_id`` to its host."""
        if self._refuse_readonly(f"restart of cluster {cluster_id}"):
            return
        host = next((c.host for c in (self.source.snapshot.clusters if self.source.snapshot else [])
                     if c.id == cluster_id), None)
        where = f" on {host}" if host else ""

        def answered(yes: bool | None) -> None:
            if yes:
                self._command(f"restart of cluster {cluster_id}", "restart_cluster", cluster_id)

        self.push_screen(ConfirmScreen(f"Restart cluster {cluster_id}{where}?"), answered)

    def confirm_host_action(self, action: str, host: str) -> None:
        """Ask, then send a ``rolling_restart`` or ``drain`` for ``host``."""
        label = {"rolling_restart": "rolling restart", "drain": "drain"}[action]
        if self._refuse_readonly(f"{label} of host {host}"):
            return
        question = (f"Rolling restart of every cluster on {host}?" if action == "rolling_restart" else
                    f"Drain {host}? Its clusters move to other hosts.")

        def answered(yes: bool | None) -> None:
            if yes:
                if action == "drain":
                    self._command(f"drain of {host}", "drain", host)
                else:
                    self._command(f"rolling restart of {host}", "restart_host", host, rolling=True)

        self.push_screen(ConfirmScreen(question), answered)

    async def control(self) -> Control:
        """The command sender (its bus starts on first use)."""
        if self._bus is None:
            bus = Bus(self.redis_settings, node_id=tool_node_id(), namespace=self.namespace, secret=self.secret,
                      request_timeout=self.command_timeout)
            await bus.start(wait=5.0)
            self._bus = bus
        return Control(self._bus, timeout=self.command_timeout)

    @work(group="command")
    async def _command(self, label: str, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.notify(escape_control(f"{label}: sent, waiting for the outcome…"), markup=False)
        try:
            control = await self.control()
        except BusError as exc:
            outcome: dict[str, Any] = {"ok": False, "message": str(exc)}
        else:
            outcome = await getattr(control, method)(*args, **kwargs)
        message = outcome.get("message") or ("done" if outcome.get("ok") else "failed")
        self.notify(escape_control(f"{label}: {message}"), severity="information" if outcome.get("ok") else "error",
                    timeout=8 if outcome.get("ok") else 15, markup=False)
        self.request_read()
        return outcome


if TYPE_CHECKING:  # mypy checks the app against what its screens ask of it
    _AS_SEEN_BY_SCREENS: type[Dashboard] = LetsfragTop


# ---------------------------------------------------------------------------------------------- entry points


def build_parser() -> argparse.ArgumentParser:
    """The ``letsfrag-top`` command line: the arguments of ``letsfrag top`` plus the global options."""
    from letsfrag.cli.main import add_global_args, add_top_args

    parser = argparse.ArgumentParser(prog="letsfrag-top", description="Live dashboard of a letsfrag deployment.")
    add_global_args(parser)
    add_top_args(parser)
    return parser


def app_from_args(args: argparse.Namespace) -> LetsfragTop:
    """Build the app from parsed arguments; raises ``ConfigError`` on bad input."""
    redis, namespace, secret = connection_from_args(args)
    raw = getattr(args, "refresh", "1s")
    try:
        refresh = parse_duration(raw)
    except ValueError as exc:
        raise ConfigError(f"--refresh: {exc}") from None
    if refresh < 0.1:
        raise ConfigError(f"--refresh: expected at least 100ms, found {raw!r}")
    return LetsfragTop(redis, namespace=namespace, secret=secret, readonly=bool(getattr(args, "readonly", False)),
                       refresh=refresh)


def run_from_args(args: argparse.Namespace) -> int:
    """``letsfrag top``: run the dashboard until ``q``; 2 on bad arguments."""
    try:
        app = app_from_args(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    app.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``letsfrag-top`` console script (the same as ``letsfrag top``)."""
    from letsfrag.cli.main import run_command

    return run_command("top", build_parser().parse_args(argv), prog="letsfrag-top")


if __name__ == "__main__":
    sys.exit(main())
