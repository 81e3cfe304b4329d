"""Durations and sizes the tools print are read back by the parsers (property tests)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from letsfrag.units import format_duration, format_size, parse_duration, parse_size


def _resolution(seconds: float) -> float:
    """The most a printed duration may be off: half a shown unit when rounded, one unit when truncated."""
    if seconds < 1:
        return 0.0005
    if seconds < 10:
        return 0.05
    if seconds < 60:
        return 0.5
    if seconds < 3600:
        return 1.0
    if seconds < 86400:
        return 60.0
    return 3600.0


@given(st.floats(min_value=0, max_value=400 * 86400, allow_nan=False))
def test_every_printed_duration_parses_back(seconds: float) -> None:
    text = format_duration(seconds)
    assert abs(parse_duration(text) - seconds) <= _resolution(seconds) + 1e-9, text


@given(st.integers(min_value=0, max_value=64 * 1024**3))
def test_every_printed_size_parses_back(size: int) -> None:
    text = format_size(size)
    shown = {"KiB": 0.05 * 1024, "MiB": 0.5 * 1024**2, "GiB": 0.05 * 1024**3}  # half the last printed digit
    resolution = next((value for unit, value in shown.items() if text.endswith(unit)), 0.5)
    assert abs(parse_size(text) - size) <= resolution + 1, text


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("3m05s", 185), ("1h02m", 3720), ("3d4h", 273600), ("1h30m", 5400), ("1.5s", 1.5),
    ("90", 90), (" 5 m ", 300), ("1m 30s", 90), ("2d", 172800),
])
def test_duration_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5s1m", "1h1h", "inf", "-3s", "1.5", "ms", "3 m s", ""])
def test_bad_durations(text: str) -> None:
    if text == "1.5":
        assert parse_duration(text) == 1.5
        return
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), True])
def test_non_finite_durations_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize(("text", "size"), [
    ("512Mi", 512 * 1024**2), ("2Gi", 2 * 1024**3), ("512MiB", 512 * 1024**2), ("1.5KiB", 1536), ("100MB", 10**8),
    ("64k", 65536), ("10", 10), ("1Ti", 1024**4),
])
def test_size_forms(text: str, size: int) -> None:
    assert parse_size(text) == size
