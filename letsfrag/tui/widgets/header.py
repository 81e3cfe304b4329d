"""The summary line at the top and the banner shown while Redis is unreachable."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static

from ...logs import escape_control
from ...snapshot.picture import Snapshot
from ...snapshot.render import summary_text
from ...units import format_duration


class SummaryHeader(Static):
    """Namespace, Redis address and state, leader, hosts/clusters/shards ready, identify queue, errors."""

    _shown: tuple[str, list[Any]] | None = None

    def show(self, snapshot: Snapshot | None, address: str, *, connected: bool, data_age: float | None,
             paused: bool, extra: str = "") -> None:
        text = summary_text(snapshot, address, connected=connected, data_age=data_age, paused=paused)
        if extra:
            text.append(f"  {extra}", style="dim")
        shown = (text.plain, text.spans)
        if shown != self._shown:  # an update re-lays out the screen: only when the line changed
            self._shown = shown
            self.update(text)


class ConnectionBanner(Static):
    """A red banner naming the outage, how long ago data was read, and that it is retrying."""

    def show(self, error: str | None, address: str, *, down_for: float | None, data_age: float | None) -> None:
        self.display = error is not None
        if error is None:
            return
        text = Text(f" Redis at {address} is unreachable", style="bold")
        if down_for is not None:
            text.append(f" for {format_duration(down_for)}")
        text.append(f" ({escape_control(error)}). ")
        text.append("Showing data " + (f"{format_duration(data_age)} old" if data_age is not None else "—none yet"))
        text.append("; retrying…")
        self.update(text)
