"""A labelled sparkline: caption with last / min / max, and the bars (CPU and RSS of a cluster)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline


class LabelledSparkline(Vertical):
    """``label  last 12.5  min 3.0  max 40.1`` above a sparkline of ``values`` (oldest first)."""

    DEFAULT_CSS = """
    LabelledSparkline { height: 3; }
    LabelledSparkline > Label { color: $text-muted; }
    LabelledSparkline > Sparkline { height: 2; }
    """

    def __init__(self, label: str, fmt: Callable[[float], str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.label = label
        self.fmt = fmt

    def compose(self) -> ComposeResult:
        yield Label(f"{self.label}  no samples yet")
        yield Sparkline([], summary_function=max)

    def show(self, values: Sequence[float]) -> None:
        caption = self.query_one(Label)
        spark = self.query_one(Sparkline)
        if not values:
            caption.update(f"{self.label}  no samples yet")
            spark.data = []
            return
        caption.update(f"{self.label}  last {self.fmt(values[-1])}  min {self.fmt(min(values))}  "
                       f"max {self.fmt(max(values))}  ({len(values)} samples)")
        spark.data = list(values)
