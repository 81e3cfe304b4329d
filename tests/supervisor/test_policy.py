"""Restart policy, backoff and health verdicts: exact times, seeded randomness, no real clock."""

from __future__ import annotations

import random
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from letsfrag.clock import FakeClock
from letsfrag.config import BackoffSettings, RestartSettings
from letsfrag.contract.exitcodes import FATAL_CLOSE_CODES, ExitCode
from letsfrag.supervisor.policy import (
    FATAL_CLOSE_NAMES,
    MAX_JITTER,
    Decision,
    ExitAction,
    ExitInfo,
    MemoryWatch,
    RestartTracker,
    backoff_delay,
    describe_exit,
    fatal_close_reason,
    is_hung,
)

NO_JITTER = BackoffSettings(jitter=0.0)
CRASH = ExitInfo(code=1, signal=None)
CLEAN = ExitInfo(code=0, signal=None)


def tracker(**overrides: object) -> RestartTracker:
    """A tracker without jitter (exact delays) unless a backoff is given."""
    options: dict[str, object] = {"backoff": NO_JITTER, **overrides}
    return RestartTracker(RestartSettings(**options), rng=random.Random(0))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ backoff


def test_backoff_sequence_doubles_up_to_the_cap() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, NO_JITTER, rng) for n in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_survives_huge_attempt_numbers() -> None:
    assert backoff_delay(10_000, NO_JITTER, random.Random(1)) == 60.0


def test_backoff_rejects_a_negative_attempt() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(-1, NO_JITTER, random.Random(1))


@given(attempt=st.integers(0, 40), seed=st.integers(0, 2**32))
def test_backoff_jitter_stays_within_twenty_percent(attempt: int, seed: int) -> None:
    settings = BackoffSettings()
    base = min(2.0**attempt, 60.0)
    delay = backoff_delay(attempt, settings, random.Random(seed))
    assert base * 0.8 <= delay <= base * 1.2


def test_backoff_jitter_is_spread_and_reproducible() -> None:
    settings = BackoffSettings()
    delays = [backoff_delay(3, settings, random.Random(seed)) for seed in range(500)]
    assert min(delays) < 8 * 0.85 and max(delays) > 8 * 1.15, "jitter should use most of its range"
    assert delays == [backoff_delay(3, settings, random.Random(seed)) for seed in range(500)]


def test_full_jitter_is_capped() -> None:
    """The config allows ``jitter: 1``; a delay still never reaches 0 (at most ``MAX_JITTER`` of it goes)."""
    settings = BackoffSettings(jitter=1.0)
    delays = [backoff_delay(0, settings, random.Random(seed)) for seed in range(200)]
    assert min(delays) >= 1.0 - MAX_JITTER and max(delays) <= 1.0 + MAX_JITTER


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"initial": -1}, "initial"),
        ({"factor": 0.5}, "factor"),
        ({"initial": 10, "max": 5}, "max"),
        ({"jitter": -0.1}, "jitter"),
        ({"reset_after": -1}, "reset_after"),
    ],
)
def test_backoff_settings_validate(options: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BackoffSettings(**options)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"policy": "sometimes"}, "policy"), ({"max_restarts": -1}, "max_restarts"), ({"window": 0}, "window")],
)
def test_restart_settings_validate(options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RestartSettings(**options)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ restart decisions


def test_crashes_restart_with_growing_delays() -> None:
    t = tracker(max_restarts=100)
    decisions = [t.on_exit(10.0 * n, CRASH) for n in range(8)]
    assert [d.action for d in decisions] == [ExitAction.RESTART] * 8
    assert [d.delay for d in decisions] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert decisions[0].reason == "crashed (exit 1)"
    assert t.restarts == 8 and not t.failed
    assert t.history[0] == (0.0, "crashed (exit 1)")


def test_the_tracker_uses_its_injected_rng() -> None:
    settings = RestartSettings(backoff=BackoffSettings(), max_restarts=100)
    runs = [[RestartTracker(settings, random.Random(7)).on_exit(0.0, CRASH).delay] for _ in range(2)]
    assert runs[0] == runs[1]
    assert 0.8 <= runs[0][0] <= 1.2


def test_backoff_resets_after_a_healthy_period() -> None:
    clock = FakeClock()
    t = tracker(max_restarts=100)
    for _ in range(4):
        t.on_exit(clock.monotonic(), CRASH)
    t.on_ready(clock.monotonic())
    clock.advance(600.0)
    assert t.on_exit(clock.monotonic(), CRASH).delay == 1.0


def test_backoff_keeps_growing_when_ready_was_too_short() -> None:
    clock = FakeClock()
    t = tracker(max_restarts=100)
    for _ in range(4):
        t.on_exit(clock.monotonic(), CRASH)
    t.on_ready(clock.monotonic())
    clock.advance(599.0)
    assert t.on_exit(clock.monotonic(), CRASH).delay == 16.0


def test_ready_must_be_continuous_within_one_run() -> None:
    clock = FakeClock()
    t = tracker(max_restarts=100)
    t.on_exit(clock.monotonic(), CRASH)
    t.on_ready(clock.monotonic())
    clock.advance(300.0)
    t.on_exit(clock.monotonic(), CRASH)  # READY for 300 s only
    clock.advance(300.0)  # not READY in this run at all
    assert t.on_exit(clock.monotonic(), CRASH).delay == 4.0


def test_a_repeated_ready_keeps_the_first_time() -> None:
    t = tracker(max_restarts=100)
    t.on_exit(0.0, CRASH)
    t.on_ready(10.0)
    t.on_ready(500.0)  # e.g. a reconnect reported READY again
    assert t.on_exit(610.0, CRASH).delay == 1.0


@pytest.mark.parametrize("max_restarts", [0, 1, 5])
def test_intensity_limit_exact_boundary(max_restarts: int) -> None:
    t = tracker(max_restarts=max_restarts, window=600.0)
    for n in range(max_restarts):
        assert t.on_exit(float(n), CRASH).action is ExitAction.RESTART
    decision = t.on_exit(599.0 if max_restarts else 0.0, CRASH)
    assert decision.action is ExitAction.FAIL
    assert decision.reason.startswith(f"crash loop: {max_restarts + 1} exits in 10m")
    assert t.failed and t.restarts == max_restarts


def test_intensity_window_slides() -> None:
    t = tracker(max_restarts=5, window=600.0)
    for n in range(5):
        assert t.on_exit(float(n), CRASH).action is ExitAction.RESTART
    # the first exit (t=0) is exactly one window old: it no longer counts
    assert t.on_exit(600.0, CRASH).action is ExitAction.RESTART
    assert t.on_exit(600.5, CRASH).action is ExitAction.FAIL


def test_the_crash_loop_message_names_the_window() -> None:
    t = tracker(max_restarts=1, window=90.0)
    t.on_exit(0.0, CRASH)
    assert t.on_exit(1.0, CRASH).reason.startswith("crash loop: 2 exits in 90s")


def test_once_failed_every_exit_is_a_failure_until_reset() -> None:
    t = tracker(max_restarts=0)
    assert t.on_exit(0.0, CRASH).action is ExitAction.FAIL
    assert t.on_exit(1.0, CLEAN).action is ExitAction.FAIL
    t.reset()
    assert not t.failed and t.history == []
    decision = t.on_exit(2.0, CRASH)
    assert decision == Decision(ExitAction.FAIL, 0.0, decision.reason)  # max_restarts=0 still applies
    t2 = tracker(max_restarts=2)
    for n in range(3):
        t2.on_exit(float(n), CRASH)
    assert t2.failed
    t2.reset()
    assert t2.on_exit(3.0, CRASH) == Decision(ExitAction.RESTART, 1.0, "crashed (exit 1)")
    assert t2.restarts == 3, "restarts keeps its total across a reset"


@pytest.mark.parametrize(
    ("policy", "info", "action"),
    [
        ("always", CLEAN, ExitAction.RESTART),
        ("on-failure", CLEAN, ExitAction.STOP),
        ("never", CLEAN, ExitAction.STOP),
        ("always", CRASH, ExitAction.RESTART),
        ("on-failure", CRASH, ExitAction.RESTART),
        ("never", CRASH, ExitAction.STOP),
        ("on-failure", ExitInfo(None, signal.SIGKILL), ExitAction.RESTART),
        ("never", ExitInfo(None, signal.SIGKILL), ExitAction.STOP),
    ],
)
def test_policies(policy: str, info: ExitInfo, action: ExitAction) -> None:
    decision = tracker(policy=policy).on_exit(0.0, info)
    assert decision.action is action
    if action is ExitAction.STOP:
        assert decision.reason.endswith(f"restart policy {policy}")


@pytest.mark.parametrize("policy", ["always", "on-failure", "never"])
def test_config_error_fails_at_once(policy: str) -> None:
    t = tracker(policy=policy)
    decision = t.on_exit(0.0, ExitInfo(code=78, signal=None))
    assert decision == Decision(ExitAction.FAIL, 0.0, "configuration error (exit 78)")
    assert t.failed and t.restarts == 0


def test_fatal_gateway_exit_without_a_reason_still_fails() -> None:
    decision = tracker().on_exit(0.0, ExitInfo(code=ExitCode.FATAL_GATEWAY, signal=None))
    assert decision == Decision(ExitAction.FAIL, 0.0, "fatal gateway close (exit 77)")


@pytest.mark.parametrize("close_code", sorted(FATAL_CLOSE_CODES))
def test_each_fatal_close_fails_with_its_reason(close_code: int) -> None:
    reason = fatal_close_reason(close_code)
    t = tracker()
    decision = t.on_exit(0.0, ExitInfo(code=77, signal=None, fatal_reason=reason))
    expected = f"Discord closed with {close_code}: {FATAL_CLOSE_NAMES[close_code]}"
    assert decision == Decision(ExitAction.FAIL, 0.0, expected)
    assert t.failed


def test_fatal_close_names() -> None:
    assert set(FATAL_CLOSE_NAMES) == FATAL_CLOSE_CODES
    assert fatal_close_reason(4004) == "Discord closed with 4004: authentication failed"
    assert fatal_close_reason(4999) == "Discord closed with 4999"


def test_a_fatal_reason_wins_over_any_exit_code() -> None:
    decision = tracker().on_exit(0.0, ExitInfo(code=1, signal=None, fatal_reason=fatal_close_reason(4014)))
    assert decision.action is ExitAction.FAIL
    assert decision.reason == "Discord closed with 4014: disallowed intents"


@pytest.mark.parametrize("policy", ["always", "on-failure", "never"])
def test_fenced_stays_stopped_without_failing(policy: str) -> None:
    t = tracker(policy=policy)
    decision = t.on_exit(0.0, ExitInfo(code=ExitCode.FENCED, signal=None))
    assert decision == Decision(ExitAction.STOP, 0.0, "fenced: shards moved to another host")
    assert not t.failed and t.restarts == 0


def test_a_sigkilled_process_restarts_and_says_so() -> None:
    decision = tracker().on_exit(0.0, ExitInfo(code=None, signal=signal.SIGKILL))
    assert decision == Decision(ExitAction.RESTART, 1.0, "killed by SIGKILL")


def test_requested_stops_are_not_failures() -> None:
    t = tracker(max_restarts=0)
    for n in range(5):
        decision = t.on_exit(float(n), ExitInfo(None, signal.SIGTERM), requested=True)
        assert decision == Decision(ExitAction.STOP, 0.0, "stopped on request (killed by SIGTERM)")
    assert not t.failed and t.restarts == 0
    assert len(t.history) == 5


def test_forced_restarts_count_toward_the_crash_loop() -> None:
    t = tracker(max_restarts=2)
    kill = ExitInfo(None, signal.SIGKILL)
    first = t.on_exit(0.0, kill, cause="hung: no heartbeat for 30s")
    assert first.reason == "hung: no heartbeat for 30s (killed by SIGKILL)"
    assert t.on_exit(60.0, kill, cause="hung").delay == 2.0
    assert t.on_exit(120.0, kill, cause="hung").action is ExitAction.FAIL


def test_clean_exits_with_policy_always_count_toward_the_crash_loop() -> None:
    t = tracker(max_restarts=2)
    actions = [t.on_exit(float(n), CLEAN).action for n in range(3)]
    assert actions == [ExitAction.RESTART, ExitAction.RESTART, ExitAction.FAIL]


def test_history_is_bounded() -> None:
    t = tracker(policy="never")
    for n in range(500):
        t.on_exit(float(n), CRASH)
    assert len(t.history) == 100
    assert t.history[-1][0] == 499.0


@pytest.mark.parametrize(
    ("info", "text"),
    [
        (ExitInfo(0, None), "exited cleanly (exit 0)"),
        (ExitInfo(1, None), "crashed (exit 1)"),
        (ExitInfo(137, None), "crashed (exit 137)"),
        (ExitInfo(None, signal.SIGKILL), "killed by SIGKILL"),
        (ExitInfo(None, 200), "killed by signal 200"),
        (ExitInfo(-15, None), "killed by SIGTERM"),
        (ExitInfo(None, None), "exited (status unknown)"),
        (ExitInfo(78, None), "configuration error (exit 78)"),
        (ExitInfo(75, None), "fenced: shards moved to another host"),
    ],
)
def test_describe_exit(info: ExitInfo, text: str) -> None:
    assert describe_exit(info) == text


def test_exit_info_from_returncode() -> None:
    assert ExitInfo.from_returncode(-9) == ExitInfo(code=None, signal=9)
    assert ExitInfo.from_returncode(3) == ExitInfo(code=3, signal=None)
    assert ExitInfo.from_returncode(None) == ExitInfo(code=None, signal=None)
    assert ExitInfo.from_returncode(77, "x").fatal_reason == "x"


@given(
    exits=st.lists(st.tuples(st.floats(0, 50), st.sampled_from([0, 1, 2, 75, 137, None]), st.booleans()), max_size=40),
    max_restarts=st.integers(0, 6),
)
def test_never_more_than_max_restarts_in_any_window(
    exits: list[tuple[float, int | None, bool]], max_restarts: int
) -> None:
    t = RestartTracker(RestartSettings(max_restarts=max_restarts, window=100.0), random.Random(3))
    now = 0.0
    restarted_at: list[float] = []
    for step, code, requested in exits:
        now += step
        info = ExitInfo(code, None if code is not None else signal.SIGKILL)
        decision = t.on_exit(now, info, requested=requested)
        assert 0 <= decision.delay <= 72.0
        if decision.action is ExitAction.RESTART:
            restarted_at.append(now)
            assert sum(1 for at in restarted_at if now - at < 100.0) <= max_restarts
        if t.failed:
            assert decision.action in (ExitAction.FAIL, ExitAction.STOP)
    assert t.restarts == len(restarted_at)


# ------------------------------------------------------------------------------------------ health


def test_memory_watch_needs_consecutive_samples() -> None:
    watch = MemoryWatch(limit=100, samples=3)
    assert [watch.sample(rss) for rss in (150, 150)] == [False, False]
    assert watch.sample(50) is False  # a dip resets the streak
    assert [watch.sample(rss) for rss in (150, 150, 150, 150)] == [False, False, True, True]
    watch.reset()
    assert watch.sample(150) is False


def test_memory_watch_at_the_limit_is_not_over() -> None:
    watch = MemoryWatch(limit=100, samples=1)
    assert watch.sample(100) is False
    assert watch.sample(101) is True


def test_memory_watch_without_a_limit_never_fires() -> None:
    watch = MemoryWatch(limit=None)
    assert not any(watch.sample(10**12) for _ in range(10))


@pytest.mark.parametrize(("limit", "samples"), [(0, 3), (-5, 3), (100, 0)])
def test_memory_watch_rejects_nonsense(limit: int, samples: int) -> None:
    with pytest.raises(ValueError):
        MemoryWatch(limit, samples)


@pytest.mark.parametrize(
    ("now", "last", "started", "timeout", "hung"),
    [
        (130.0, 100.0, 0.0, 30.0, False),  # exactly the timeout: not yet
        (130.001, 100.0, 0.0, 30.0, True),
        (129.0, 100.0, 0.0, 30.0, False),
        (30.0, None, 0.0, 30.0, False),  # no heartbeat yet: counted from the start
        (30.5, None, 0.0, 30.0, True),
        (10_000.0, 0.0, 0.0, 0.0, False),  # disabled
        (10_000.0, None, 0.0, -1.0, False),
    ],
)
def test_is_hung(now: float, last: float | None, started: float, timeout: float, hung: bool) -> None:
    assert is_hung(now, last, started, timeout) is hung
