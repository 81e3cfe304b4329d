"""The events pane: the deployment's event stream, newest first, coloured by severity."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from ...events import Event
from ...snapshot.render import event_cells
from .tables import EventsTable


class EventsPane(EventsTable):
    """Shows at most ``limit`` events; history comes from the stream, so a late attach sees the past too."""

    def __init__(self, *, limit: int = 100, utc: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.limit = limit
        self.utc = utc

    def show(self, events: Sequence[Event]) -> None:
        self.sync([(e.id, e) for e in events[: self.limit]], self._cells_of_event)

    def _cells_of_event(self, event: Event) -> tuple[Text | str, ...]:
        return event_cells(event, utc=self.utc)
