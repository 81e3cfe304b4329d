"""KeyedTable: rows off screen are formatted only when they scroll into view; rendered cells follow changes."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult

from letsfrag.tui.widgets.keyed_table import KeyedTable


class Table(KeyedTable):
    COLUMNS = (("id", "Id"), ("value", "Value"))


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield Table(id="table")


def _rows(n: int, version: int) -> list[tuple[str, int]]:
    return [(str(i), version) for i in range(n)]


def _counting(calls: list[str]) -> Any:
    def render(value: tuple[str, int]) -> tuple[Text | str, ...]:
        calls.append(value[0])
        return (value[0], Text(f"v{value[1]}"))

    return render


async def test_only_visible_rows_are_formatted_and_others_on_scroll() -> None:
    app = TableApp()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(Table)
        calls: list[str] = []
        render = _counting(calls)
        table.sync([(key, (key, v)) for key, v in _rows(200, 1)], render)
        await pilot.pause()
        assert len(calls) == 200  # new rows are always formatted
        assert table.row_keys == [str(i) for i in range(200)]

        calls.clear()
        table.sync([(key, (key, v)) for key, v in _rows(200, 2)], render)
        await pilot.pause()
        assert 0 < len(calls) < 30, "only the rows on screen (plus a margin) are formatted"
        assert table.pending_count == 200 - len(calls)
        assert str(table.get_row("0")[1]) == "v2"
        assert str(table.get_row("199")[1]) == "v1"  # still the old value, waiting off screen

        table.scroll_end(animate=False)
        await pilot.pause()
        assert str(table.get_row("199")[1]) == "v2"
        assert "v2" in table.render_line(table.size.height - 1).text

        # asking for a row's cells applies its pending value
        assert str(table.cells_of("100")[1]) == "v2"  # type: ignore[index]
        assert str(table.get_row("100")[1]) == "v2"


async def test_rendered_cells_follow_value_changes() -> None:
    app = TableApp()
    async with app.run_test(size=(40, 8)) as pilot:
        table = app.query_one(Table)
        table.sync([("a", ("a", Text("first")))])
        await pilot.pause()
        assert "first" in table.render_line(1).text
        table.sync([("a", ("a", Text("second")))])
        await pilot.pause()
        assert "second" in table.render_line(1).text
        # same text, another style: a change too
        table.sync([("a", ("a", Text("second", style="red")))])
        await pilot.pause()
        assert table.cells_of("a")[1].style == "red"  # type: ignore[index,union-attr]


async def test_removed_rows_and_reorder_keep_the_cursor_row() -> None:
    app = TableApp()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(Table)
        table.sync([(k, (k, "x")) for k in ("a", "b", "c")])
        table.move_cursor(row=1)
        await pilot.pause()
        assert table.selected_key == "b"
        table.sync([(k, (k, "x")) for k in ("c", "b")])
        await pilot.pause()
        assert table.row_keys == ["c", "b"]
        assert table.selected_key == "b"
        assert table.pending_count == 0
