"""The simulator's pure parts: ids, referee rules, handling verdicts, replay buffer, options, compression."""

from __future__ import annotations

import json

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from support.sim import FakeLink, ZlibContext

import letsfrag.sim
from letsfrag.clock import FakeClock
from letsfrag.errors import ConfigError
from letsfrag.sim import SimulatorOptions, payloads
from letsfrag.sim.background import paced_due
from letsfrag.sim.compression import Plain, ZlibStream, ZstdStream, make_compressor
from letsfrag.sim.core import SimCore
from letsfrag.sim.handling import HandlingReferee
from letsfrag.sim.referee import IdentifyVerdict, Referee
from letsfrag.sim.sessions import Session


def test_public_exports() -> None:
    assert letsfrag.sim.__all__ == ["Simulator", "SimulatorOptions"]


@given(st.integers(0, 1_000_000), st.integers(1, 4096))
def test_generated_guild_ids_land_on_their_shard(index: int, shard_count: int) -> None:
    guild_id = payloads.guild_id_for(index, shard_count)
    assert (guild_id >> 22) % shard_count == index % shard_count
    assert payloads.shard_for(guild_id, shard_count) == index % shard_count


def make_referee(**overrides: object) -> Referee:
    settings: dict = dict(
        max_concurrency=2, identify_window=5.0, enforce_window=False, session_start_total=3,
        reject_when_exhausted=False, answer_timeout=5.0, now=0.0,
    )
    settings.update(overrides)
    return Referee(**settings)


def test_identify_window_is_per_bucket() -> None:
    referee = make_referee()
    assert referee.identify(0, now=0.0).verdict is IdentifyVerdict.ACCEPTED
    assert referee.identify(1, now=0.1).verdict is IdentifyVerdict.ACCEPTED  # bucket 1
    late = referee.identify(2, now=1.0)  # bucket 0, 4 s early
    assert late.verdict is IdentifyVerdict.ACCEPTED_VIOLATION and late.bucket == 0
    assert late.early_by == pytest.approx(4.0)
    assert referee.identify(4, now=6.0).verdict is IdentifyVerdict.ACCEPTED  # 5 s after the accepted one
    snap = referee.snapshot(now=6.0)
    assert snap["identifies"] == {"total": 4, "per_shard": {"0": 1, "1": 1, "2": 1, "4": 1}}
    assert snap["identify_violations"] == {"total": 1, "per_bucket": {"0": 1}}
    assert snap["session_start_remaining"] == 0


def test_refused_identify_does_not_move_the_window_or_spend_budget() -> None:
    referee = make_referee(enforce_window=True, max_concurrency=1)
    referee.identify(0, now=0.0)
    assert referee.identify(1, now=4.0).verdict is IdentifyVerdict.RATE_LIMITED
    assert referee.identify(1, now=5.0).verdict is IdentifyVerdict.ACCEPTED
    assert referee.session_start_remaining == 1


def test_exhausted_budget_and_its_daily_reset() -> None:
    referee = make_referee(session_start_total=1, reject_when_exhausted=True, identify_window=0.0)
    assert referee.identify(0, now=0.0).verdict is IdentifyVerdict.ACCEPTED
    assert referee.identify(0, now=1.0).verdict is IdentifyVerdict.EXHAUSTED
    assert referee.budget_reset_after(now=1.0) == pytest.approx(86_399.0)
    assert referee.identify(0, now=86_400.0).verdict is IdentifyVerdict.ACCEPTED


def test_duplicate_sessions_and_longest_overlap() -> None:
    referee = make_referee()
    referee.session_live(3, "a", now=0.0)
    referee.session_live(3, "a", now=0.5)  # the same session again is not a duplicate
    referee.session_live(3, "b", now=1.0)
    referee.session_live(3, "c", now=2.0)
    assert referee.snapshot(now=3.0)["duplicate_sessions"]["longest_overlap_seconds"] == 2.0
    referee.session_dead(3, "a", now=4.0)
    referee.session_dead(3, "b", now=5.0)  # back to one live session: the overlap lasted 4 s
    snap = referee.snapshot(now=9.0)
    assert snap["duplicate_sessions"] == {
        "count": 2, "longest_overlap_seconds": 4.0, "per_shard": {"3": 2}, "overlapping_now": []
    }
    assert snap["sessions_active"] == {"3": 1} and snap["shards_ready"] == [3]


def test_an_announced_handover_overlap_is_not_a_duplicate() -> None:
    referee = make_referee(handover_deadline=10.0)
    referee.session_live(2, "old", now=0.0)
    referee.session_live(2, "new", now=1.0, announced=7)  # the successor of epoch 7
    snap = referee.snapshot(now=2.0)
    assert snap["duplicate_sessions"]["count"] == 0 and snap["duplicate_sessions"]["overlapping_now"] == []
    assert snap["announced_overlaps"]["count"] == 1 and snap["announced_overlaps"]["overlapping_now"] == [2]
    assert snap["announced_overlaps"]["longest_overlap_seconds"] == 1.0
    referee.session_dead(2, "old", now=4.0)  # the old process closed: the overlap lasted 3 s
    referee.session_live(2, "new", now=5.0)  # a RESUME of the successor's session keeps its mark
    snap = referee.snapshot(now=9.0)
    assert snap["announced_overlaps"] == {
        "count": 1, "per_shard": {"2": 1}, "longest_overlap_seconds": 3.0, "longest_per_shard": {"2": 3.0},
        "overlapping_now": [], "over_deadline": 0, "deadline_seconds": 10.0,
    }
    assert snap["duplicate_sessions"]["count"] == 0


def test_unannounced_third_and_same_epoch_overlaps_are_duplicates() -> None:
    referee = make_referee()
    referee.session_live(0, "a", now=0.0)
    referee.session_live(0, "b", now=1.0)  # nobody announced it: a split brain
    assert referee.snapshot(now=1.0)["duplicate_sessions"]["count"] == 1
    referee.session_live(1, "c", now=0.0)
    referee.session_live(1, "d", now=1.0, announced=3)
    referee.session_live(1, "e", now=2.0, announced=4)  # a third session is never allowed
    snap = referee.snapshot(now=3.0)
    assert snap["duplicate_sessions"]["per_shard"] == {"0": 1, "1": 1}
    assert snap["announced_overlaps"]["count"] == 1 and snap["announced_overlaps"]["overlapping_now"] == []
    referee.session_dead(1, "e", now=4.0)  # back to the announced pair: no longer a split
    snap = referee.snapshot(now=4.0)
    assert snap["duplicate_sessions"]["overlapping_now"] == [0]
    assert snap["announced_overlaps"]["overlapping_now"] == [1]
    referee.session_live(5, "f", now=0.0, announced=9)
    referee.session_live(5, "g", now=0.0, announced=9)  # two successors of one handover: a duplicate
    assert referee.snapshot(now=1.0)["duplicate_sessions"]["per_shard"]["5"] == 1
    referee.session_live(6, "owner", now=0.0, announced=4)  # a former successor, the owner now
    referee.session_live(6, "stray", now=1.0)  # nobody announced the newer one: a split brain
    assert referee.snapshot(now=1.0)["duplicate_sessions"]["per_shard"]["6"] == 1
    referee.session_dead(6, "stray", now=2.0)
    referee.session_live(6, "next", now=3.0, announced=5)  # the next handover of the same shard
    snap = referee.snapshot(now=3.0)
    assert snap["duplicate_sessions"]["per_shard"]["6"] == 1 and snap["announced_overlaps"]["per_shard"]["6"] == 1


def test_the_old_session_resuming_during_a_handover_stays_announced() -> None:
    referee = make_referee()
    referee.session_live(1, "old", now=0.0)
    referee.session_live(1, "new", now=1.0, announced=2)
    referee.session_dead(1, "old", now=2.0)  # the old process's connection dropped ...
    referee.session_live(1, "old", now=2.5)  # ... and it RESUMEd while the successor was still gated
    snap = referee.snapshot(now=3.0)
    assert snap["duplicate_sessions"]["count"] == 0 and snap["announced_overlaps"]["count"] == 2


def test_an_announced_overlap_longer_than_the_deadline_is_counted_once() -> None:
    referee = make_referee(handover_deadline=5.0)
    referee.session_live(4, "old", now=0.0)
    referee.session_live(4, "new", now=0.0, announced=2)
    assert referee.snapshot(now=4.0)["announced_overlaps"]["over_deadline"] == 0
    assert referee.snapshot(now=6.0)["announced_overlaps"]["over_deadline"] == 1
    referee.session_dead(4, "old", now=8.0)
    snap = referee.snapshot(now=9.0)
    assert snap["announced_overlaps"]["over_deadline"] == 1 and snap["duplicate_sessions"]["count"] == 0


def test_reset_zeroes_counters_but_keeps_live_sessions() -> None:
    referee = make_referee()
    referee.identify(0, now=0.0)
    referee.session_live(0, "a", now=0.0)
    referee.session_live(0, "b", now=0.0)
    referee.count("resumes")
    referee.reset(now=10.0)
    snap = referee.snapshot(now=11.0)
    assert snap["identifies"]["total"] == 0 and snap["resumes"] == 0
    assert snap["duplicate_sessions"]["count"] == 0
    assert snap["duplicate_sessions"]["longest_overlap_seconds"] == 1.0  # still overlapping, since the reset
    assert snap["sessions_active"] == {"0": 2} and snap["session_start_remaining"] == 3


def test_handling_verdicts() -> None:
    handling = HandlingReferee(answer_timeout=5.0)
    for n, delivered in ((1, True), (2, True), (3, True), (4, False), (5, True)):
        handling.sent(handling.take_n(), message_id=100 + n, now=0.0, delivered=delivered)
    assert handling.reply(101, "whatever") is not None  # by message_reference
    assert handling.reply(None, "Pong 2!") is not None  # by content
    handling.reply(None, "pong 2")
    assert handling.reply(None, "hello") is None
    handling.delivered(105, now=0.0)  # no-op: already delivered
    snap = handling.snapshot(now=6.0)
    assert snap == {
        "sent": 5, "answered_once": 1, "answered_twice_or_more": 1, "unanswered_live": 2, "pending": 0,
        "undeliverable": 1, "replies": 4, "unattributed_replies": 1, "sent_ping": 5, "sent_join": 0,
    }
    handling.sent(handling.take_n(), message_id=200, now=6.0, delivered=True, kind="join")
    assert handling.reply(None, "welcome joiner-6") is not None  # a join answered by name
    assert handling.reply(None, "welcome joiner-99") is None
    assert handling.snapshot(now=6.0)["sent_join"] == 1
    handling.delivered(104, now=5.5)  # replayed by a RESUME later
    assert handling.snapshot(now=6.0)["pending"] == 1


def test_session_replay_buffer() -> None:
    session = Session("s", shard_id=0, shard_count=1, intents=0, buffer_size=3)
    session.next_frame("READY", "{}", buffered=False)
    for n in range(5):
        session.dispatch("X", str(n), tag=n)
    assert session.seq == 6 and session.dropped_upto == 3
    assert session.replay_after(2) is None  # seq 3 is gone
    replay = session.replay_after(3)
    assert replay is not None
    assert [json.loads(frame)["s"] for frame, _ in replay] == [4, 5, 6]
    assert [tag for _, tag in replay] == [2, 3, 4]
    assert session.replay_after(6) == []
    assert session.replay_after(7) is None


def test_options_validation_names_every_bad_field() -> None:
    with pytest.raises(ConfigError) as info:
        SimulatorOptions(shards=0, on_violation="explode", heartbeat_interval=0,  # type: ignore[arg-type]
                         guilds_per_shard=0, max_guilds_per_shard=-1)
    text = str(info.value)
    assert "guilds_per_shard: must be at least 1" in text and "max_guilds_per_shard: cannot be negative" in text
    assert "shards: must be at least 1" in text
    assert "on_violation: must be one of close, invalid, count" in text
    assert "heartbeat_interval" in text
    assert SimulatorOptions().replace(shards=4).shards == 4


@pytest.mark.parametrize(("rate", "elapsed", "total", "due"), [
    (10, 0.0, None, 1), (10, 0.35, None, 4), (10, 5.0, 20, 20), (0.5, 3.0, None, 2),
])
def test_paced_due(rate: float, elapsed: float, total: int | None, due: int) -> None:
    assert paced_due(rate, elapsed, total) == due


def test_zlib_stream_is_one_stream_with_sync_flushes() -> None:
    compressor, inflater = ZlibStream(), ZlibContext()
    for n in range(3):
        frame = json.dumps({"op": 0, "d": "x" * 100 * n})
        data = compressor.compress(frame)
        assert isinstance(data, bytes) and data.endswith(b"\x00\x00\xff\xff")
        assert inflater.decompress(data) == frame


def test_zstd_stream_decodes_message_by_message() -> None:
    compressor = ZstdStream()
    decoder = zstandard.ZstdDecompressor().decompressobj()  # what discord.py uses
    for n in range(3):
        frame = json.dumps({"op": 0, "d": "y" * 100 * n})
        data = compressor.compress(frame)
        assert isinstance(data, bytes)
        assert decoder.decompress(data).decode() == frame


def test_make_compressor() -> None:
    assert isinstance(make_compressor(None), Plain)
    with pytest.raises(ValueError, match="unsupported compress='gzip'"):
        make_compressor("gzip")


def test_core_reaps_silent_links_and_expires_sessions_on_its_clock() -> None:
    clock = FakeClock()
    core = SimCore(SimulatorOptions(shards=2, guilds=2, heartbeat_interval=10, resume_window=30), clock=clock)
    link = FakeLink(clock.monotonic())
    core.link_opened(link)
    session = core.start_session(link, 0, 2, 513)
    assert [json.loads(f)["t"] for f in link.sent] == ["READY", "GUILD_CREATE"]
    clock.advance(15)
    assert core.reap() == 0
    clock.advance(0.1)
    assert core.reap() == 1 and link.closed_with == (4009, "Session timed out")
    assert core.stats()["shards_ready"] == [] and core.stats()["sessions_resumable"] == 1
    assert session.resumable_until == pytest.approx(clock.monotonic() + 30)
    clock.advance(30)
    core.reap()
    assert core.stats()["sessions_resumable"] == 0


def test_enforce_nonce_returns_the_first_message_and_counts_one_answer() -> None:
    clock = FakeClock()
    core = SimCore(SimulatorOptions(shards=1, guilds=1), clock=clock)
    channel = next(iter(core.world.guilds.values())).text_channel_id
    n = core.send_ping()
    reply = {"content": f"pong {n}", "nonce": "lfabc", "enforce_nonce": True}
    first = core.post_message(channel, reply)
    again = core.post_message(channel, dict(reply))  # a second process sends the same reply
    assert first is not None and again == first
    assert core.stats()["nonce_deduped"] == 1 and core.stats()["handling"]["answered_once"] == 1
    core.post_message(channel, {**reply, "nonce": "lfother"})  # another nonce is another message
    assert core.stats()["handling"]["answered_twice_or_more"] == 1
    core.post_message(channel, {"content": f"pong {n}", "nonce": "lfabc"})  # no enforce_nonce: a new message
    clock.advance(301.0)
    later = core.post_message(channel, reply)  # the window has passed: a new message
    assert later is not None and later["id"] != first["id"]
    assert core.stats()["nonce_deduped"] == 1 and core.stats()["handling"]["replies"] == 4
