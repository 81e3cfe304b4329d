"""The pure validation of values read from Redis (letsfrag.contract.records): finite, bounded, typed, key named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from letsfrag.contract.records import (
    MAX_EPOCH,
    LayoutRecord,
    lenient_float,
    lenient_int,
    parse_epoch,
    parse_float,
    parse_int,
    parse_json,
    parse_running,
)
from letsfrag.errors import RecordError

LAYOUT = {"shard_count": "10", "shards_per_cluster": "4", "cluster_count": "3", "max_concurrency": "1",
          "identify_window": "5.0", "lease_ttl": "10.0", "lease_grace": "2.0", "heartbeat_interval": "2.0",
          "updated_at": "1700000000.000"}


def test_a_good_layout_round_trips() -> None:
    layout = LayoutRecord.from_hash(LAYOUT, key="ns:layout")
    assert layout.shards_of(2) == (8, 9) and layout.geometry == (10, 4)
    assert LayoutRecord.from_hash(layout.to_hash()) == layout
    assert layout.to_hash()["lease_ttl"] == "10.0" and layout.differences(layout) == []


@pytest.mark.parametrize(("field", "raw", "problem"), [
    ("lease_ttl", "inf", "must be a finite number, found 'inf'"),
    ("lease_ttl", "nan", "must be a finite number, found 'nan'"),
    ("lease_ttl", "-1", "must be greater than 0, found -1"),
    ("lease_ttl", "0", "must be greater than 0, found 0"),
    ("lease_ttl", "abc", "must be a number, found 'abc'"),
    ("lease_ttl", "1e9", "must be between 0 and 3600, found 1e+09"),
    ("lease_grace", "-0.5", "must be between 0 and 3600, found -0.5"),
    ("heartbeat_interval", "10.0", "must be less than lease_ttl (10s), found 10"),
    ("shard_count", "many", "must be an integer, found 'many'"),
    ("shard_count", "1.5", "must be an integer, found '1.5'"),
    ("shard_count", "0", "must be between 1 and 1000000, found 0"),
    ("shards_per_cluster", "-4", "must be between 1 and 1000000, found -4"),
    ("shards_per_cluster", "2", "cluster_count' must be 5 for 10 shards in clusters of 2, found 3"),
    ("cluster_count", "999999999", "must be between 1 and 1000000, found 999999999"),
    ("cluster_count", "4", "must be 3 for 10 shards in clusters of 4, found 4"),
    ("max_concurrency", "", "must be an integer, found ''"),
])
def test_a_bad_layout_value_names_the_key_and_the_field(field: str, raw: str, problem: str) -> None:
    with pytest.raises(RecordError) as err:
        LayoutRecord.from_hash({**LAYOUT, field: raw}, key="ns:layout")
    assert problem in str(err.value) and str(err.value).startswith("ns:layout field ")
    assert err.value.key == "ns:layout" and isinstance(err.value, ValueError)


def test_a_missing_layout_field() -> None:
    with pytest.raises(RecordError, match="ns:layout field 'lease_ttl' is missing"):
        LayoutRecord.from_hash({k: v for k, v in LAYOUT.items() if k != "lease_ttl"}, key="ns:layout")


def test_differences_ignore_the_timestamp() -> None:
    a = LayoutRecord.from_hash(LAYOUT)
    b = LayoutRecord.from_hash({**LAYOUT, "updated_at": "5", "lease_ttl": "20"})
    assert a.differences(b) == ["lease_ttl"] and a != b
    assert LayoutRecord.from_hash({**LAYOUT, "updated_at": "nan"}).updated_at is None


@pytest.mark.parametrize(("raw", "value"), [(None, 0), ("0", 0), ("17", 17), (str(MAX_EPOCH), MAX_EPOCH)])
def test_epochs(raw: str | None, value: int) -> None:
    assert parse_epoch(raw, key="ns:epoch") == value


@pytest.mark.parametrize("raw", ["abc", "-1", "1.5", "inf", "1e3", str(MAX_EPOCH + 1), "", " "])
def test_bad_epochs(raw: str) -> None:
    with pytest.raises(RecordError, match="ns:epoch field 'value'"):
        parse_epoch(raw, key="ns:epoch")


@pytest.mark.parametrize(("raw", "expect", "expected"), [
    ('{"a": [1]}', dict, {"a": [1]}), (b'{"a": 1}', dict, {"a": 1}), ("[1, 2]", list, [1, 2]), ("[]", list, []),
])
def test_parse_json(raw: str | bytes, expect: type[dict[Any, Any]] | type[list[Any]], expected: Any) -> None:
    assert parse_json(raw, key="ns:k", field="f", expect=expect) == expected


@pytest.mark.parametrize(("raw", "expect", "of", "message"), [
    ("{nope", dict, "", "ns:k field 'f' is not JSON: '{nope'"),
    (None, dict, "", "ns:k field 'f' is not JSON: 'None'"),
    (b"\xff", list, "", "ns:k field 'f' is not JSON: \"b'\\\\xff'\""),
    ("x" * 100, dict, "", f"ns:k field 'f' is not JSON: '{'x' * 80}'"),
    ("[1]", dict, "", "ns:k field 'f' must be a JSON object, found '[1]'"),
    ('"text"', dict, "", "ns:k field 'f' must be a JSON object, found '\"text\"'"),
    ('{"a": 1}', list, "", "ns:k field 'f' must be a JSON list, found '{\"a\": 1}'"),
    ("3", list, "cluster ids", "ns:k field 'f' must be a JSON list of cluster ids, found '3'"),
])
def test_parse_json_names_the_key_the_field_and_the_problem(raw: Any, expect: type[dict[Any, Any]] | type[list[Any]],
                                                            of: str, message: str) -> None:
    with pytest.raises(RecordError) as caught:
        parse_json(raw, key="ns:k", field="f", expect=expect, of=of)
    assert str(caught.value) == message


@pytest.mark.parametrize(("raw", "expected"), [
    (None, {}), ("", {}), ('{"0": 3, "2": 5}', {0: 3, 2: 5}),
])
def test_running(raw: str | None, expected: dict[int, int]) -> None:
    assert parse_running(raw, key="ns:host:h") == expected


@pytest.mark.parametrize("raw", ['{"0": Infinity}', '{"0": NaN}', '{"0": 1.5}', '{"x": 1}', "[1]", "nope",
                                 '{"0": 1e400}', '{"0": true}', '{"0": -3}'])
def test_bad_running(raw: str) -> None:
    with pytest.raises(RecordError, match="ns:host:h field 'running'"):
        parse_running(raw, key="ns:host:h")


@pytest.mark.parametrize(("raw", "expected"), [
    ("1.5", 1.5), ("nan", None), ("inf", None), ("-inf", None), ("abc", None), ("", None), (None, None),
    (3, 3.0), (True, None), ("1e400", None),
])
def test_lenient_float(raw: Any, expected: float | None) -> None:
    assert lenient_float(raw) == expected


def test_lenient_int_never_overflows() -> None:
    assert lenient_int("inf") is None and lenient_int("nan") is None and lenient_int("7.9") == 7
    assert lenient_int(json.loads("1e308")) == int(1e308)


def test_bounds_are_inclusive() -> None:
    assert parse_int("5", key="k", field="f", minimum=5, maximum=5) == 5
    assert parse_float("0", key="k", field="f") == 0.0
    with pytest.raises(RecordError, match="k field 'f' must be greater than 0"):
        parse_float("0", key="k", field="f", positive=True)
    with pytest.raises(RecordError, match="k field 'f' must be an integer, found True"):
        parse_int(True, key="k", field="f")
