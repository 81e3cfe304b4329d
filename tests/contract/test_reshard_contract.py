"""The reshard contract (letsfrag.contract.reshard): layout generations, reshard handover records, the
reshard record."""

from __future__ import annotations

import json

import pytest

from letsfrag.contract.handover import HandoverRecord, HandoverState
from letsfrag.contract.keys import Keys
from letsfrag.contract.records import Grant, LayoutRecord
from letsfrag.contract.reshard import ReshardRecord, ReshardState, retired_cluster_keys
from letsfrag.errors import RecordError
from letsfrag.snapshot.picture import operation_text

BASE = {"shard_count": "8", "shards_per_cluster": "4", "cluster_count": "2", "max_concurrency": "1",
        "identify_window": "5", "lease_ttl": "10", "lease_grace": "2", "heartbeat_interval": "2"}


def test_a_layout_without_generation_reads_as_generation_1_from_cluster_0() -> None:
    layout = LayoutRecord.from_hash(BASE)
    assert (layout.generation, layout.cluster_base) == (1, 0)
    assert list(layout.cluster_ids) == [0, 1] and layout.shards_of(1) == (4, 5, 6, 7)
    assert layout.to_hash()["generation"] == "1" and layout.to_hash()["cluster_base"] == "0"


def test_a_later_generation_numbers_its_clusters_after_the_previous_one() -> None:
    old = LayoutRecord.from_hash(BASE)
    new = LayoutRecord.from_hash({**BASE, "shard_count": "16", "cluster_count": "4", "generation": "2",
                                  "cluster_base": str(old.next_cluster_base)})
    assert list(new.cluster_ids) == [2, 3, 4, 5]
    assert new.shards_of(2) == (0, 1, 2, 3) and new.shards_of(5) == (12, 13, 14, 15)
    assert new.shards_of(1) == () and new.shards_of(6) == ()
    guild = (13 << 22) | 7  # shard 13 of 16
    assert new.cluster_of_guild(guild) == 5 and old.cluster_of_guild(guild) == 1  # 13 % 8 = 5: cluster 1
    assert LayoutRecord.from_hash(new.to_hash()) == new
    assert new.differences(old) == ["shard_count", "cluster_count", "generation", "cluster_base"]


@pytest.mark.parametrize("field, value", [("generation", "0"), ("generation", "x"), ("cluster_base", "-1")])
def test_a_bad_generation_field_is_named(field: str, value: str) -> None:
    with pytest.raises(RecordError, match=field):
        LayoutRecord.from_hash({**BASE, field: value})
    assert LayoutRecord.for_display({**BASE, field: value}) is not None  # display falls back


def _record(**extra: object) -> HandoverRecord:
    return HandoverRecord(cluster=3, host="h1", epoch=9, from_host="", from_epoch=0, reason="reshard",
                          state=HandoverState.PREPARING, started=100.0, deadline=160.0, **extra)  # type: ignore[arg-type]


def test_a_reshard_handover_record_carries_its_generation_and_geometry() -> None:
    record = _record(generation=2, shard_count=16, shards_per_cluster=4, cluster_base=2)
    again = HandoverRecord.from_json(3, record.to_json())
    assert again == record and again.resharding
    live = LayoutRecord.from_hash(BASE)
    layout = again.layout_of(live)
    assert layout.shards_of(3) == (4, 5, 6, 7) and layout.shard_count == 16 and layout.cluster_count == 4
    assert layout.lease_ttl == live.lease_ttl


def test_a_handover_record_needs_a_source_unless_it_is_a_reshard() -> None:
    with pytest.raises(RecordError, match="from_host"):
        HandoverRecord.from_json(3, _record().to_json())
    plain = HandoverRecord(3, "h1", 9, "h0", 4, "restart", HandoverState.PREPARING, 1.0, 2.0)
    assert "generation" not in json.loads(plain.to_json())
    assert plain.layout_of(LayoutRecord.from_hash(BASE)).generation == 1


def test_the_reshard_record_round_trips_and_names_bad_values() -> None:
    new = LayoutRecord.from_hash({**BASE, "shard_count": "16", "cluster_count": "4", "generation": "2",
                                  "cluster_base": "2"})
    record = ReshardRecord(generation=2, from_generation=1, state=ReshardState.PREPARING, started=1.0, deadline=61.0,
                           layout=new.to_hash(),
                           clusters={c: Grant("h0" if c % 2 else "h1", 10 + c) for c in range(2, 6)},
                           retiring=(0, 1))
    again = ReshardRecord.from_json(record.to_json())
    assert again == record and again.new_layout == new
    assert again.progress(3)["total"] == 4
    # what status and letsfrag-top show of it (the broker's ``operation`` field)
    assert operation_text(again.progress(3)) == "reshard to generation 2: 3 of 4 ready"
    switched = ReshardRecord.from_json(json.dumps({**json.loads(record.to_json()), "state": "switched"}))
    assert operation_text(switched.progress(4)) == "reshard to generation 2: switched, retiring 2 cluster(s)"
    broken = json.loads(record.to_json())
    broken["clusters"] = {}
    with pytest.raises(RecordError, match="clusters"):
        ReshardRecord.from_json(json.dumps(broken))
    with pytest.raises(RecordError, match="state"):
        ReshardRecord.from_json(json.dumps({**json.loads(record.to_json()), "state": "half"}))


def test_retired_cluster_keys_names_every_per_cluster_key() -> None:
    keys = retired_cluster_keys(Keys("t"), [0])
    assert keys == ["t:status:cluster:0", "t:status:shards:0", "t:errors:cluster:0", "t:restarts:cluster:0",
                    "t:metrics:cluster:0", "t:sessions:0"]
