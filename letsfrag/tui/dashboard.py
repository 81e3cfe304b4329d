"""What the dashboard's screens may ask of the app: :class:`Dashboard`, which :class:`LetsfragTop` implements.

The app pushes the screens; a screen reads the app's data and asks it for the actions that go through the
operator's confirmation and :class:`~letsfrag.cli.control.Control`, through this interface rather than by
importing the app (so the app and its screens form no import cycle; ``tests/test_layers.py`` checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..clock import Clock
    from .data_source import DataSource

__all__ = ["Dashboard"]


@runtime_checkable
class Dashboard(Protocol):
    """The app as its screens see it (implemented by :class:`~letsfrag.tui.app.LetsfragTop`)."""

    #: the reads: the latest snapshot, the connection's state, cluster details on demand
    source: DataSource
    #: the Redis address shown in the header and the banner
    address: str
    clock: Clock
    #: seconds between reads
    refresh_interval: float
    #: times in UTC rather than local time
    utc: bool
    #: destructive actions are refused (``--readonly``)
    readonly: bool

    def open_cluster(self, cluster_id: int) -> None:
        """Push the screen of ``cluster_id``."""

    def confirm_restart_cluster(self, cluster_id: int) -> None:
        """Ask, then send ``restart`` for ``cluster_id`` to its host."""

    def confirm_host_action(self, action: str, host: str) -> None:
        """Ask, then send a ``rolling_restart`` or ``drain`` for ``host``."""
