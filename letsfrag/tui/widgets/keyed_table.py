"""A DataTable updated by diffing rows by key: no clear-and-refill, the cursor stays on its row.

Built for 1,000-row tables refreshed every second (``letsfrag-top``): only rows on screen are formatted and
pushed to the table on a refresh; the others keep their source value as *pending* and are applied when they
scroll into view (or when asked for with :meth:`KeyedTable.cells_of`). A rendered cell is kept while its value
is the same object, so a refresh re-renders only the cells that changed, not every visible cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.cache import LRUCache
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

Cells = tuple[Text | str, ...]
#: how many rendered cells are kept (a screenful is a few hundred, times cursor/hover variants)
CELL_CACHE_SIZE = 4096


def _identity(cells: Any) -> Cells:
    return cells  # type: ignore[no-any-return]


class KeyedTable(DataTable[Any]):
    """A table whose rows are identified by a string key; :meth:`sync` applies a new list of rows.

    Subclasses set ``COLUMNS`` to ``(key, label)`` pairs. Reordering uses :meth:`DataTable.sort` with the
    identity of each row's first cell (always a distinct ``Text`` object) to find the row's wanted position.
    Column widths grow to fit a value once it is applied (so, for an off-screen row, when it scrolls into
    view) and never shrink.
    """

    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = ()

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cursor_type", "row")
        kwargs.setdefault("zebra_stripes", True)
        # before DataTable's __init__, which clears the caches
        self._rendered: LRUCache[tuple[Any, ...], tuple[object, list[list[Segment]]]] = LRUCache(CELL_CACHE_SIZE)
        super().__init__(**kwargs)
        self._cells: dict[str, Cells] = {}
        self._order: list[str] = []
        #: key -> (source value, formatter) of rows whose newest value is not in the table yet
        self._pending: dict[str, tuple[Any, Callable[[Any], Cells]]] = {}
        self._column_keys = [key for key, _ in self.COLUMNS]
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

    @property
    def pending_count(self) -> int:
        """Rows whose newest value waits to scroll into view."""
        return len(self._pending)

    def cells_of(self, key: str) -> Cells | None:
        """The newest cells of row ``key`` (applying them to the table if they were pending)."""
        if key in self._pending:
            self._apply_pending([key])
        return self._cells.get(key)

    def sync(self, rows: Sequence[tuple[str, Any]], render: Callable[[Any], Cells] | None = None) -> None:
        """Make the table show ``rows`` (in that order) with the fewest changes.

        Each row is ``(key, cells)``, or ``(key, value)`` with ``render(value) -> cells``: then ``render`` runs
        only for new rows and rows on screen; the others format when they scroll into view.
        """
        fmt = render or _identity
        selected = self.selected_key
        wanted = {key for key, _ in rows}
        for key in [k for k in self._cells if k not in wanted]:
            self.remove_row(key)
            del self._cells[key]
            self._pending.pop(key, None)
        for key, value in rows:
            if key in self._cells:
                self._pending[key] = (value, fmt)
            else:
                cells = _first_as_text(fmt(value))
                self.add_row(*cells, key=key)
                self._cells[key] = cells
        order = [key for key, _ in rows]
        if order != self._order:
            position = {id(self._cells[key][0]): index for index, key in enumerate(order)}
            self.sort(self._column_keys[0], key=lambda cell: position.get(id(cell), len(position)))
            self._order = order
            if selected is not None and selected in self._cells:
                self.move_cursor(row=order.index(selected), animate=False)
        self._apply_visible()

    # ----------------------------------------------------------------------------------- pending rows

    def _visible_keys(self, margin: int = 2) -> list[str]:
        """Keys of the rows on screen (every row is one line high), plus ``margin`` rows either side."""
        height = self.size.height - (self.header_height if self.show_header else 0)
        if height <= 0 or not self._order:
            return []
        top = max(0, int(self.scroll_offset.y) - margin)
        return self._order[top: int(self.scroll_offset.y) + height + margin]

    def _apply_visible(self) -> None:
        if self._pending:
            self._apply_pending([key for key in self._visible_keys() if key in self._pending])

    def _apply_pending(self, keys: list[str]) -> None:
        """Format the pending rows ``keys`` and push the cells that changed into the table."""
        columns = self._column_keys
        widths = {key: column.content_width for key, column in zip(columns, self.columns.values(), strict=True)}
        for key in keys:
            value, fmt = self._pending.pop(key)
            cells = _first_as_text(fmt(value))
            old = self._cells[key]
            if _same_row(old, cells):
                continue
            merged: list[Text | str] = []
            for column, before, after in zip(columns, old, cells, strict=True):
                if _same(before, after):
                    merged.append(before)
                    continue
                # widen a column when needed, never shrink: DataTable re-measures the whole
                # column on a narrower value, which is quadratic with 1,000 rows
                width = cell_len(after.plain if isinstance(after, Text) else after)
                wider = width > widths[column]
                self.update_cell(key, column, after, update_width=wider)
                if wider:
                    widths[column] = width
                merged.append(after)
            self._cells[key] = tuple(merged)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if int(old_value) != int(new_value):
            self._apply_visible()

    def _on_resize(self, event: events.Resize) -> None:
        super()._on_resize(event)
        self._apply_visible()

    # ----------------------------------------------------------------------------------- render cache

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False) -> list[list[Segment]]:
        """DataTable's cell render, cached while the cell holds the same value object.

        DataTable keys its own cache on a table-wide update counter, so one changed cell re-renders every
        visible cell; this cache survives such updates (row-label cells go to DataTable as before).
        """
        column_key = self._column_locations.get_key(column_index) if column_index >= 0 else None
        row_key = self._header_row_key if row_index == -1 else self._row_locations.get_key(row_index)
        if row_key is None or column_key is None:  # row labels (unused here)
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        value = self.columns[column_key].label if row_index == -1 else self._data[row_key][column_key]
        cache_key = (row_key, column_key, row_index, base_style, width, cursor, hover, self._show_hover_cursor,
                     self.show_cursor, self._pseudo_class_state)
        hit = self._rendered.get(cache_key)
        if hit is not None and hit[0] is value:
            return hit[1]
        lines = super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        self._rendered[cache_key] = (value, lines)
        return lines

    def _clear_caches(self) -> None:
        super()._clear_caches()
        self._rendered.clear()

    def notify_style_update(self) -> None:
        self._rendered.clear()
        super().notify_style_update()


def _first_as_text(cells: Cells) -> Cells:
    """The first cell as a ``Text`` (its identity finds the row when sorting)."""
    first = cells[0]
    return cells if isinstance(first, Text) else (Text(first), *cells[1:])


def _same(a: Text | str, b: Text | str) -> bool:
    """Equal text *and* style (``Text.__eq__`` ignores the base style)."""
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and a.style == b.style and a.spans == b.spans
    return type(a) is type(b) and a == b


def _same_row(a: Cells, b: Cells) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
