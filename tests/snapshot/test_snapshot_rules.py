"""The snapshot's derived rules: the colour of a heartbeat's age (the dashboard and ``letsfrag status`` show it)."""

from __future__ import annotations

import pytest

from letsfrag.snapshot.picture import heartbeat_colour


@pytest.mark.parametrize(
    ("age", "colour"),
    [(0.0, "green"), (10.0, "green"), (10.01, "yellow"), (25.0, "yellow"), (25.01, "red"), (None, "red")],
)
def test_heartbeat_colour(age: float | None, colour: str) -> None:
    assert heartbeat_colour(age, 5.0) == colour
