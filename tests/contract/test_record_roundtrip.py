"""Every Redis record class reads back what it writes: ``from_hash(to_hash(x)) == x`` (or the JSON pair), for any
value a writer may hold (hypothesis); the partial and display readers of ``{ns}:layout`` agree with the strict one."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from letsfrag.cluster.session_records import SessionRecord
from letsfrag.contract.handover import HandoverRecord, HandoverState, SuccessorReport, SuccessorState, parse_successors
from letsfrag.contract.records import (
    GEOMETRY_FIELDS,
    MAX_CONCURRENCY,
    MAX_DURATION,
    MAX_EPOCH,
    MAX_SHARDS,
    ROUTING_FIELDS,
    Grant,
    LayoutRecord,
)

durations = st.floats(min_value=0.0, max_value=MAX_DURATION, allow_nan=False, allow_infinity=False)
positive = durations.filter(lambda x: x > 0)
epochs = st.integers(min_value=0, max_value=MAX_EPOCH)
hosts = st.text(min_size=1, max_size=40)
stamps = st.none() | st.integers(min_value=0, max_value=10**13).map(lambda ms: ms / 1000)


#: the geometry test's bound: its checks build each cluster's block of shards, and the arithmetic does not depend on
#: the size (a block of MAX_SHARDS took 270 ms an example beside a CPU hog)
GEOMETRY_MAX_SHARDS = 4096


@st.composite
def layouts(draw: st.DrawFn, max_shards: int = MAX_SHARDS) -> LayoutRecord:
    shards = draw(st.integers(1, max_shards))
    per = draw(st.integers(1, max_shards))
    ttl = draw(positive)
    beat = draw(positive.filter(lambda x: x < ttl))
    return LayoutRecord(shard_count=shards, shards_per_cluster=per, cluster_count=-(-shards // per),
                        max_concurrency=draw(st.integers(1, MAX_CONCURRENCY)), identify_window=draw(positive),
                        lease_ttl=ttl, lease_grace=draw(durations), heartbeat_interval=beat,
                        allow_eval=draw(st.booleans()), updated_at=draw(stamps),
                        generation=draw(st.integers(1, 50)), cluster_base=draw(st.integers(0, MAX_SHARDS)))


@given(layouts())
def test_layout_round_trips(layout: LayoutRecord) -> None:
    data = layout.to_hash()
    assert all(isinstance(v, str) for v in data.values())
    back = LayoutRecord.from_hash(data, key="ns:layout")
    assert back == layout and back.updated_at == layout.updated_at
    # the readers that check less agree on what they read
    assert LayoutRecord.from_hash(data, only=ROUTING_FIELDS) == layout
    assert LayoutRecord.from_hash(data, only=GEOMETRY_FIELDS) == layout
    assert LayoutRecord.for_display(data) == layout


@given(layouts(GEOMETRY_MAX_SHARDS), st.integers(0, 2 * MAX_SHARDS))
def test_geometry_covers_each_shard_once(layout: LayoutRecord, guild_shard: int) -> None:
    last = layout.shards_of(layout.next_cluster_base - 1)
    assert last and last[-1] == layout.shard_count - 1 and layout.shards_of(layout.next_cluster_base) == ()
    assert layout.shards_of(layout.cluster_base - 1) == () and layout.shards_of(layout.cluster_base)[0] == 0
    shard = guild_shard % layout.shard_count
    assert shard in layout.shards_of(layout.cluster_of_guild(guild_shard << 22))


@given(hosts, epochs)
def test_grant_round_trips(host: str, epoch: int) -> None:
    grant = Grant(host, epoch)
    assert Grant.from_json(grant.to_json()) == grant
    assert Grant.parse_all({"7": grant.to_json()}) == ({7: grant}, [])
    assert grant.names(host, epoch) and not grant.names(host, epoch + 1)


@given(st.integers(0, MAX_SHARDS), hosts, st.integers(1, MAX_EPOCH), hosts, epochs, st.text(max_size=20),
       st.sampled_from(HandoverState), st.floats(0, 1e11), st.floats(0, 1e11))
def test_handover_record_round_trips(cluster: int, host: str, epoch: int, from_host: str, from_epoch: int,
                                     reason: str, state: HandoverState, started: float, deadline: float) -> None:
    record = HandoverRecord(cluster, host, epoch, from_host, from_epoch, reason, state, started, deadline)
    assert HandoverRecord.from_json(cluster, record.to_json(), key="ns:handover") == record
    assert HandoverRecord.parse_all({str(cluster): record.to_json()}) == ({cluster: record}, [])


@given(st.dictionaries(st.integers(0, MAX_SHARDS), st.tuples(st.integers(1, MAX_EPOCH), st.sampled_from(SuccessorState),
                                                             st.none() | st.integers(1, 2**22), st.text(max_size=20)),
                       max_size=5))
def test_successor_reports_round_trip(raw: dict[int, tuple[int, SuccessorState, int | None, str]]) -> None:
    reports = {cid: SuccessorReport(cid, epoch, state, pid, reason) for cid, (epoch, state, pid, reason) in raw.items()}
    assert parse_successors(SuccessorReport.dump(reports), key="ns:host:h") == reports


@given(st.integers(0, MAX_SHARDS), st.text(min_size=1, max_size=40), st.sampled_from(["ws://", "wss://"]),
       st.text(max_size=30), st.integers(0, 2**53), epochs, st.booleans())
def test_session_record_round_trips(shard: int, session_id: str, scheme: str, rest: str, seq: int, epoch: int,
                                    closed: bool) -> None:
    record = SessionRecord(shard, session_id, scheme + rest, seq, epoch, closed)
    assert SessionRecord.from_json(shard, record.to_json()) == record


def test_grant_errors_name_the_key_and_the_cluster() -> None:
    cases = {"{not json": "is not JSON", "[1]": "must be a JSON object", json.dumps({"epoch": 1}): "needs a host",
             json.dumps({"host": "h", "epoch": 1.0}): "epoch must be an integer",
             json.dumps({"host": "h", "epoch": True}): "epoch must be an integer",
             json.dumps({"host": "h", "epoch": -1}): "must be between 0"}
    for raw, problem in cases.items():
        grants, problems = Grant.parse_all({"3": raw}, key="ns:assignment")
        assert grants == {} and len(problems) == 1
        assert str(problems[0]).startswith("ns:assignment field '3' ") and problem in str(problems[0]), raw
    assert "ns:assignment field 'x'" in str(Grant.parse_all({"x": Grant("h", 1).to_json()}, key="ns:assignment")[1][0])


def test_display_and_partial_readers_fall_back_to_the_config_defaults() -> None:
    from letsfrag.config import BrokerConfig
    from letsfrag.contract.records import LAYOUT_FALLBACKS

    config = BrokerConfig.model_validate({"redis": {"url": "redis://127.0.0.1:1/0"}, "shards": 4})
    defaults = {"max_concurrency": config.max_concurrency, "identify_window": config.identify_window,
                "lease_ttl": config.lease.ttl, "lease_grace": config.lease.grace,
                "heartbeat_interval": config.heartbeat_interval}
    assert defaults == LAYOUT_FALLBACKS
    shown = LayoutRecord.for_display({"shard_count": "10", "shards_per_cluster": "4", "lease_ttl": "inf",
                                      "lease_grace": "0", "cluster_count": "999999"})
    assert shown is not None and shown.cluster_count == 3 and shown.lease_ttl == 10.0
    assert shown.lease_grace == 0.0, "a stored 0 is shown as 0, not as the fallback"
    assert LayoutRecord.for_display({"shard_count": "10"}) is None
