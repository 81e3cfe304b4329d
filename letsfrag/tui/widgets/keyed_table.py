"""A DataTable updated by diffing rows by key: no clear-and-refill, the cursor stays on its row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

Cells = tuple[Text | str, ...]


class KeyedTable(DataTable[Any]):
    """A table whose rows are identified by a string key; :meth:`sync` applies a new list of rows.

    Subclasses set ``COLUMNS`` to ``(key, label)`` pairs. Reordering uses :meth:`DataTable.sort` with the
    identity of each row's first cell (always a distinct ``Text`` object) to find the row's wanted position.
    """

    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = ()

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cursor_type", "row")
        kwargs.setdefault("zebra_stripes", True)
        super().__init__(**kwargs)
        self._cells: dict[str, Cells] = {}
        self._order: list[str] = []
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)

    @property
    def row_keys(self) -> list[str]:
        """Row keys in display order."""
        return list(self._order)

    @property
    def selected_key(self) -> str | None:
        """The key of the row under the cursor (None for an empty table)."""
        if not self._order or not 0 <= self.cursor_row < len(self._order):
            return None
        try:
            row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        except (CellDoesNotExist, RowDoesNotExist):
            return None
        return row_key.value

    def cells_of(self, key: str) -> Cells | None:
        return self._cells.get(key)

    def sync(self, rows: Sequence[tuple[str, Cells]]) -> None:
        """Make the table show ``rows`` (in that order) with the fewest changes."""
        selected = self.selected_key
        wanted = {key for key, _ in rows}
        for key in [k for k in self._cells if k not in wanted]:
            self.remove_row(key)
            del self._cells[key]
        columns = [key for key, _ in self.COLUMNS]
        widths = {key: column.content_width for key, column in zip(columns, self.columns.values(), strict=True)}
        for key, cells in rows:
            first = cells[0]
            cells = (first if isinstance(first, Text) else Text(first), *cells[1:])
            old = self._cells.get(key)
            if old is None:
                self.add_row(*cells, key=key)
                self._cells[key] = cells
            elif not _same_row(old, cells):
                merged: list[Text | str] = []
                for column, before, after in zip(columns, old, cells, strict=True):
                    if not _same(before, after):
                        # widen a column when needed, never shrink: DataTable re-measures the whole
                        # column on a narrower value, which is quadratic with 1,000 rows
                        wider = cell_len(after.plain if isinstance(after, Text) else after) > widths[column]
                        self.update_cell(key, column, after, update_width=wider)
                        if wider:
                            widths[column] = cell_len(after.plain if isinstance(after, Text) else after)
                        merged.append(after)
                    else:
                        merged.append(before)
                self._cells[key] = tuple(merged)
        order = [key for key, _ in rows]
        if order != self._order:
            position = {id(self._cells[key][0]): index for index, key in enumerate(order)}
            self.sort(columns[0], key=lambda cell: position.get(id(cell), len(position)))
            self._order = order
            if selected is not None and selected in self._cells:
                self.move_cursor(row=order.index(selected), animate=False)


def _same(a: Text | str, b: Text | str) -> bool:
    """Equal text *and* style (``Text.__eq__`` ignores the base style)."""
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and a.style == b.style and a.spans == b.spans
    return type(a) is type(b) and a == b


def _same_row(a: Cells, b: Cells) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
