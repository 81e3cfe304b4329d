"""The key reference (``?``)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Static

HELP = """\
[b]Main screen[/b]
  ↑ ↓ / tab      move, switch table          enter   open the cluster under the cursor
  /              filter rows (any column)     escape  clear the filter
  s              cycle the cluster sort       e       only problems (not ready, late, lost…)
  p              pause / resume updates       ?       this help        q   quit
[b]Actions[/b] (ask for confirmation; refused with --readonly)
  r              restart the selected cluster (also clears FAILED)
  R              rolling restart of the selected host (or the selected cluster's host)
  d              drain the selected host (its clusters move to other hosts)
[b]Cluster screen[/b]
  r              restart this cluster         escape  back
[b]Colours[/b]
  state: [green]ready[/] [cyan]starting[/] [yellow]degraded/backoff[/] [bold red]failed/unassigned[/]
  heartbeat age: [green]≤ 2 intervals[/] [yellow]≤ 5[/] [red]older or never[/]
"""


class HelpScreen(ModalScreen[None]):
    """Keys and colours; any of escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Label("letsfrag-top — keys", id="help-title")
            yield Static(HELP, id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
