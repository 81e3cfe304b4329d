"""The handover records (letsfrag/contract/handover.py) read back what they write, and name what is wrong in
bad values."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from letsfrag.contract.handover import (
    HandoverRecord,
    HandoverState,
    SuccessorReport,
    SuccessorState,
    parse_successors,
)
from letsfrag.errors import RecordError

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@given(cluster=st.integers(0, 10_000), host=names, from_host=names, epoch=st.integers(1, 10**12),
       from_epoch=st.integers(0, 10**12), state=st.sampled_from(list(HandoverState)), started=times, deadline=times,
       reason=st.sampled_from(["restart", "drain", ""]))
def test_handover_record_round_trip(cluster: int, host: str, from_host: str, epoch: int, from_epoch: int,
                                    state: HandoverState, started: float, deadline: float, reason: str) -> None:
    record = HandoverRecord(cluster, host, epoch, from_host, from_epoch, reason, state, started, deadline)
    assert HandoverRecord.from_json(str(cluster), record.to_json()) == record


@given(st.dictionaries(st.integers(0, 1000), st.tuples(st.integers(1, 10**9), st.sampled_from(list(SuccessorState)),
                                                       st.none() | st.integers(1, 4_000_000), names)))
def test_successor_reports_round_trip(entries: dict[int, tuple[int, SuccessorState, int | None, str]]) -> None:
    reports = {cid: SuccessorReport(cid, epoch, state, pid, reason) for cid, (epoch, state, pid, reason)
               in entries.items()}
    assert parse_successors(SuccessorReport.dump(reports)) == reports


@pytest.mark.parametrize(("raw", "words"), [
    ("{", "is not JSON"),
    ("[1]", "must be a JSON object"),
    (json.dumps({"host": "b", "epoch": 2, "from_host": "a", "from_epoch": 1, "state": "gone", "started": 1,
                 "deadline": 2}), "unknown state 'gone'"),
    (json.dumps({"host": "b", "epoch": "x", "from_host": "a", "from_epoch": 1, "state": "preparing", "started": 1,
                 "deadline": 2}), "3.epoch"),
    (json.dumps({"epoch": 2, "from_host": "a", "from_epoch": 1, "state": "preparing", "started": 1,
                 "deadline": 2}), "'host' and 'from_host'"),
    (json.dumps({"host": "b", "epoch": 2, "from_host": "a", "from_epoch": 1, "state": "preparing", "started": "inf",
                 "deadline": 2}), "3.started"),
])
def test_bad_handover_records_are_named(raw: str, words: str) -> None:
    with pytest.raises(RecordError) as caught:
        HandoverRecord.from_json("3", raw, key="lf:handover")
    assert "lf:handover" in str(caught.value) and words in str(caught.value)


def test_parse_all_keeps_the_good_records_and_lists_the_bad() -> None:
    good = HandoverRecord(1, "b", 5, "a", 4, "drain", HandoverState.SWITCHED, 10.0, 70.0)
    records, problems = HandoverRecord.parse_all({"1": good.to_json(), "2": "nope", "x": good.to_json()})
    assert records == {1: good}
    assert len(problems) == 2
    assert good.names("b", 5) and not good.names("a", 5) and not good.names("b", 4)


@pytest.mark.parametrize("raw", ["{", "[]", '{"1": 3}', '{"1": {"epoch": 2, "state": "odd"}}',
                                 '{"x": {"epoch": 2, "state": "ready"}}', '{"1": {"epoch": 0, "state": "ready"}}'])
def test_bad_successor_fields_are_named(raw: str) -> None:
    with pytest.raises(RecordError) as caught:
        parse_successors(raw, key="lf:host:h0")
    assert "lf:host:h0" in str(caught.value) and "successors" in str(caught.value)


def test_missing_successor_field_means_none() -> None:
    assert parse_successors(None) == {} == parse_successors("")
