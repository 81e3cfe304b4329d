"""The cluster lifecycle as a table: inputs and a fake clock in, effects out, no process, no Redis, no loop.

Each row is a sequence of inputs fed to :class:`letsfrag.supervisor.lifecycle.Lifecycle` through a fake shell
(:class:`FakeShell`: a spawn gets the next pid, timers are a table read against a :class:`FakeClock`), then what
must hold: the cluster's state, and the effects of the last input that must (in that order) or must not appear.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.supervisor import host_config

from letsfrag.clock import FakeClock
from letsfrag.contract.records import LayoutRecord
from letsfrag.supervisor import lifecycle as lc
from letsfrag.supervisor.state import ClusterRecord, ClusterState, HostState, StopIntent

LAYOUT = LayoutRecord(shard_count=8, shards_per_cluster=4, cluster_count=2, max_concurrency=1, identify_window=5.0,
                      lease_ttl=10.0, lease_grace=2.0, heartbeat_interval=2.0)
#: host_config's timers: backoff 0.2 s doubling up to 1 s, 3 restarts in 60 s, hang after 3 s, stop within 1 s
BACKOFF = 0.2
HANG = 3.0


class FakeShell:
    """Carries out the lifecycle's effects without processes: what a manager would do, in a table."""

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.clock = FakeClock()
        self.state = HostState(layout=LAYOUT)
        self.life = lc.Lifecycle(host_config("redis://127.0.0.1:1", tmp_path, **config), "h1", self.state,
                                 random.Random(7))
        #: cluster id -> (due at, token)
        self.timers: dict[int, tuple[float, int]] = {}
        self.pids = iter(range(1000, 2000))
        self.fail_spawns = False
        #: every effect carried out by the last input (fed-back ones included), in order
        self.last: list[lc.Effect] = []
        self.reply: tuple[bool, str, int] | None = None

    def now(self) -> lc.Instant:
        return lc.Instant(self.clock.monotonic(), self.clock.time())

    def record(self, cid: int = 0) -> ClusterRecord:
        return self.state.records[cid]

    def feed(self, effects: list[lc.Effect]) -> None:
        self.last = []
        self._run(effects)

    def _run(self, effects: list[lc.Effect]) -> None:
        for effect in effects:
            self.last.append(effect)
            if isinstance(effect, lc.Spawn):
                if self.fail_spawns:
                    self._run(self.life.spawn_failed(effect.cluster_id, effect.token, "No such file", "bot",
                                                     self.now()))
                else:
                    self._run(self.life.spawned(effect.cluster_id, effect.token, next(self.pids), self.now()))
            elif isinstance(effect, lc.StartTimer):
                self.timers[effect.cluster_id] = (self.clock.monotonic() + effect.delay, effect.token)
            elif isinstance(effect, lc.CancelTimer):
                self.timers.pop(effect.cluster_id, None)

    # ------------------------------------------------------------------------------------------ inputs

    def grant(self, grants: dict[int, int]) -> None:
        effects = self.life.take_grants(grants)
        self.feed(effects + self.life.reconcile(self.now()))

    def ipc(self, message: dict[str, Any], cid: int = 0) -> None:
        self.feed(self.life.ipc(cid, self.record(cid).token, message, self.now()))

    def exit(self, returncode: int | None, cid: int = 0) -> None:
        self.feed(self.life.exited(cid, self.record(cid).token, returncode, ["Traceback", "boom"], self.now()))

    def stop_done(self, cid: int = 0) -> None:
        self.feed(self.life.stop_done(cid, self.record(cid).token))

    def advance(self, seconds: float) -> None:
        """Move the clock; timers that are due fire (``restart_due``)."""
        self.clock.advance(seconds)
        self.last = []
        for cid, (due, token) in sorted(self.timers.items()):
            if due <= self.clock.monotonic():
                del self.timers[cid]
                self._run(self.life.restart_due(cid, token, self.now()))

    def tick(self) -> None:
        self.feed(self.life.tick(self.now(), {}))

    def fence(self, reason: str = "lease lost") -> None:
        self.feed(self.life.fence(reason))

    def restart(self, cid: int = 0) -> None:
        ok, message, before, effects = self.life.request_restart(cid)
        self.reply = (ok, message, before)
        self.feed(effects + (self.life.start_if_idle(cid, self.now()) if ok else []))

    def shutdown(self) -> None:
        self.state.closing = True
        self.feed(self.life.shutdown())


Step = Callable[[FakeShell], None]


def grant(grants: dict[int, int]) -> Step:
    return lambda s: s.grant(grants)


def ipc(**message: Any) -> Step:
    return lambda s: s.ipc(message)


def exit_(returncode: int | None) -> Step:
    return lambda s: s.exit(returncode)


def advance(seconds: float) -> Step:
    return lambda s: s.advance(seconds)


def fence(s: FakeShell) -> None:
    s.fence()


def tick(s: FakeShell) -> None:
    s.tick()


def restart(s: FakeShell) -> None:
    s.restart()


def shutdown(s: FakeShell) -> None:
    s.shutdown()


def stop_done(s: FakeShell) -> None:
    s.stop_done()


def fail_spawns(s: FakeShell) -> None:
    s.fail_spawns = True


READY = [grant({0: 1}), ipc(op="ready")]
CRASHED = [*READY, exit_(1)]
HUNG_STOP = [*READY, advance(HANG + 0.1), tick, advance(lc.HANG_DUMP_WAIT), tick]


def is_(effect_type: type, /, **fields: Any) -> Callable[[lc.Effect], bool]:
    """An effect of ``effect_type`` whose ``fields`` have these values."""
    return lambda e: isinstance(e, effect_type) and all(getattr(e, k) == v for k, v in fields.items())


def state_is(state: ClusterState) -> Callable[[lc.Effect], bool]:
    return is_(lc.StateChanged, state=state)


@dataclass(frozen=True)
class Case:
    name: str
    steps: list[Step]
    state: ClusterState
    #: effects of the last step that must appear, in this order
    then: list[Callable[[lc.Effect], bool]] = field(default_factory=list)
    #: effects of the last step that must not appear
    never: list[Callable[[lc.Effect], bool]] = field(default_factory=list)
    check: Callable[[FakeShell], bool] = lambda s: True


SPAWN = is_(lc.Spawn)
TIMER = is_(lc.StartTimer)

CASES = [
    Case("grant -> spawn -> starting", [grant({0: 1})], ClusterState.STARTING,
         then=[state_is(ClusterState.PENDING), is_(lc.Spawn, epoch=1), state_is(ClusterState.STARTING),
               is_(lc.Fire, name="cluster_create")]),
    Case("ready", READY, ClusterState.READY, then=[state_is(ClusterState.READY), is_(lc.Fire, name="cluster_ready")]),
    Case("crash -> backoff", CRASHED, ClusterState.BACKOFF,
         then=[is_(lc.Fire, name="cluster_exit"), is_(lc.PublishError), is_(lc.Emit, kind="cluster_crash"),
               state_is(ClusterState.BACKOFF), is_(lc.StartTimer, delay=BACKOFF), is_(lc.PublishRestart),
               is_(lc.Emit, kind="cluster_restart")],
         never=[SPAWN], check=lambda s: s.record().last_error == "boom" and s.record().next_restart_at is not None),
    Case("crash -> backoff -> not yet due", [*CRASHED, advance(BACKOFF / 2)], ClusterState.BACKOFF, never=[SPAWN]),
    Case("crash -> backoff -> restart due -> spawn", [*CRASHED, advance(BACKOFF)], ClusterState.STARTING,
         then=[is_(lc.Spawn, epoch=1), state_is(ClusterState.STARTING)],
         check=lambda s: s.record().spawns == 2 and s.record().restarts == 1),
    Case("revoke during backoff: stopped, confirmed, never restarted", [*CRASHED, grant({})], ClusterState.STOPPED,
         then=[is_(lc.CancelTimer, cluster_id=0), state_is(ClusterState.STOPPED), is_(lc.ClusterStopped, epoch=1)],
         check=lambda s: not s.timers),
    Case("revoke during backoff, then the old timer's time", [*CRASHED, grant({}), advance(5)], ClusterState.STOPPED,
         never=[SPAWN]),
    Case("revoke while running: stop, then confirm on exit", [*READY, grant({}), exit_(0)], ClusterState.STOPPED,
         then=[state_is(ClusterState.STOPPED), is_(lc.ClusterStopped, cluster_id=0, epoch=1)], never=[SPAWN, TIMER]),
    Case("new epoch while running: stop the old run, then spawn the new", [*READY, grant({0: 2}), exit_(0)],
         ClusterState.STARTING, then=[is_(lc.ClusterStopped, epoch=1), is_(lc.Spawn, epoch=2)]),
    Case("stale grant (older epoch) after a revoke: nothing starts",
         [grant({0: 5}), grant({}), exit_(0), grant({0: 3})], ClusterState.STOPPED, never=[SPAWN],
         check=lambda s: s.record().epoch == 5),
    Case("stale grant during backoff: ignored, the restart still comes",
         [grant({0: 5}), exit_(1), grant({0: 3}), advance(BACKOFF)], ClusterState.STARTING,
         then=[is_(lc.Spawn, epoch=5)]),
    Case("fatal close: failed, stopped, no restart", [*READY, ipc(op="fatal", code=4004)], ClusterState.FAILED,
         then=[state_is(ClusterState.FAILED), is_(lc.Emit, kind="cluster_failed"), is_(lc.Fire, name="cluster_failed"),
               is_(lc.Stop, reason="fatal")],
         check=lambda s: s.record().fatal_reason == "Discord closed with 4004: authentication failed"),
    Case("fatal close, then the exit: still failed, nothing starts", [*READY, ipc(op="fatal", code=4004), exit_(0)],
         ClusterState.FAILED, never=[SPAWN, TIMER, state_is(ClusterState.STOPPED)]),
    Case("fatal close, then the grant again: the failed epoch is not started",
         [*READY, ipc(op="fatal", code=4004), exit_(0), grant({0: 1})], ClusterState.FAILED, never=[SPAWN]),
    Case("fatal 4011: the host record names it (sharding_required)", [*READY, ipc(op="fatal", code=4011)],
         ClusterState.FAILED, then=[is_(lc.PublishHostFields, fields={"sharding_required": "[0]"}),
                                    is_(lc.PublishMessage)]),
    Case("shutdown during backoff: stopped, never restarted", [*CRASHED, shutdown, advance(5)], ClusterState.STOPPED,
         never=[SPAWN], check=lambda s: not s.timers and s.record().reason == "supervisor shutting down"),
    Case("shutdown while running: stop, no restart after the exit", [*READY, shutdown, exit_(0)],
         ClusterState.STOPPED, never=[SPAWN, TIMER]),
    Case("hang detected -> SIGUSR1", [*READY, advance(HANG + 0.1), tick], ClusterState.READY,
         then=[is_(lc.Note), is_(lc.Signal, signal=signal.SIGUSR1)], never=[is_(lc.Stop)]),
    Case("hang: the dump gets its time", [*READY, advance(HANG + 0.1), tick, advance(lc.HANG_DUMP_WAIT / 2), tick],
         ClusterState.READY, never=[is_(lc.Stop), is_(lc.Signal)]),
    Case("hang detected -> signal -> kill (stop without asking)", HUNG_STOP, ClusterState.STOPPING,
         then=[is_(lc.Emit, kind="cluster_hung"), state_is(ClusterState.STOPPING),
               is_(lc.Stop, ask=False, reason="hung", timeout=1.0)],
         check=lambda s: s.record().stop_intent is StopIntent.HUNG),
    Case("hung stop, exit: counted by the policy (backoff)", [*HUNG_STOP, exit_(-signal.SIGKILL)], ClusterState.BACKOFF,
         then=[state_is(ClusterState.BACKOFF), TIMER], check=lambda s: "hung" in s.record().reason),
    Case("a heartbeat ends a hang before the stop", [*READY, advance(HANG + 0.1), tick, ipc(op="heartbeat"),
                                                     advance(lc.HANG_DUMP_WAIT), tick],
         ClusterState.READY, never=[is_(lc.Stop)]),
    Case("restart during a hung stop: it starts again at once after the exit",
         [*HUNG_STOP, restart, exit_(-signal.SIGKILL)], ClusterState.STARTING,
         then=[is_(lc.PublishRestart), is_(lc.Spawn, epoch=1)], never=[TIMER],
         check=lambda s: s.reply is not None and s.reply[0] and "will start again" in s.reply[1]),
    Case("restart during a hung stop: no second stop is started", [*HUNG_STOP, restart], ClusterState.STOPPING,
         never=[is_(lc.Stop), is_(lc.HurryStop)], check=lambda s: s.record().stop_intent is StopIntent.RESTART),
    Case("operator restart while running", [*READY, restart, exit_(0)], ClusterState.STARTING,
         then=[is_(lc.PublishRestart), SPAWN], never=[TIMER]),
    Case("operator restart of a failed cluster", [*READY, ipc(op="fatal", code=4004), exit_(0), restart],
         ClusterState.STARTING, then=[is_(lc.Spawn, epoch=1)]),
    Case("operator restart during a revoke: refused", [*READY, grant({0: 2}), restart], ClusterState.STOPPING,
         never=[SPAWN], check=lambda s: s.reply is not None and not s.reply[0]),
    Case("fence during a stop: hurried, final, no restart", [*READY, restart, fence], ClusterState.STOPPING,
         then=[is_(lc.Emit, kind="host_fenced"), is_(lc.HurryStop, reason="fenced", timeout=1.0)],
         never=[is_(lc.Stop)], check=lambda s: s.record().stop_intent is StopIntent.FENCE),
    Case("fence during a stop, then the exit: stopped, not confirmed, not restarted",
         [*READY, restart, fence, exit_(0)], ClusterState.STOPPED, never=[SPAWN, TIMER, is_(lc.ClusterStopped)]),
    Case("fence during a hung stop, then the exit: stopped, not restarted", [*HUNG_STOP, fence, exit_(-9)],
         ClusterState.STOPPED, never=[SPAWN, TIMER]),
    Case("fence while running: stop within the rest of the lease", [*READY, fence], ClusterState.STOPPING,
         then=[is_(lc.Stop, reason="fenced", timeout=1.0)], check=lambda s: s.state.desired == {}),
    Case("fence during backoff", [*CRASHED, fence, advance(5)], ClusterState.STOPPED, never=[SPAWN]),
    Case("a stop that ended lets a later stop start again", [*READY, restart, stop_done, fence], ClusterState.STOPPING,
         then=[is_(lc.Stop, reason="fenced")]),
    Case("spawn fails: backoff", [fail_spawns, grant({0: 1})], ClusterState.BACKOFF,
         then=[SPAWN, state_is(ClusterState.BACKOFF), TIMER],
         check=lambda s: s.record().last_error == "cannot start bot: No such file"),
    Case("crash loop: failed after max_restarts", [*CRASHED, advance(1), exit_(1), advance(1), exit_(1), advance(1),
                                                   exit_(1)],
         ClusterState.FAILED, then=[state_is(ClusterState.FAILED), is_(lc.Fire, name="cluster_failed")],
         never=[TIMER]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_lifecycle(case: Case, tmp_path: Path) -> None:
    shell = FakeShell(tmp_path)
    for step in case.steps:
        step(shell)
    assert shell.record().state is case.state, (shell.record().state, shell.record().reason)
    remaining = list(shell.last)
    for expected in case.then:
        for index, effect in enumerate(remaining):
            if expected(effect):
                remaining = remaining[index + 1:]
                break
        else:
            raise AssertionError(f"expected effect missing or out of order; last effects: {shell.last}")
    for forbidden in case.never:
        assert not any(forbidden(e) for e in shell.last), f"unexpected effect in {shell.last}"
    assert case.check(shell), shell.record()


def test_a_late_event_of_a_replaced_process_is_ignored(tmp_path: Path) -> None:
    shell = FakeShell(tmp_path)
    shell.grant({0: 1})
    old = shell.record().token
    shell.exit(1)
    shell.advance(BACKOFF)  # a new run: a new token
    assert shell.life.exited(0, old, 1, [], shell.now()) == []
    assert shell.life.ipc(0, old, {"op": "ready"}, shell.now()) == []
    assert shell.life.restart_due(0, old, shell.now()) == []
    assert shell.record().state is ClusterState.STARTING


def test_the_record_is_plain_data(tmp_path: Path) -> None:
    """No process, timer or task in the record: what it holds compares and copies as values."""
    shell = FakeShell(tmp_path)
    shell.grant({0: 1})
    record = shell.record()
    assert record.pid == 1000 and record.alive
    for name, value in vars(record).items():
        assert type(value).__module__.split(".")[0] in ("builtins", "letsfrag"), (name, type(value))
    shell.exit(0)
    assert record.pid is None and not record.alive


def test_sampling_is_asked_for_when_due_and_memory_stops(tmp_path: Path) -> None:
    shell = FakeShell(tmp_path, limits={"max_memory": "1MiB"})
    shell.grant({0: 1})
    shell.tick()
    assert any(isinstance(e, lc.Sample) for e in shell.last)
    shell.tick()
    assert not any(isinstance(e, lc.Sample) for e in shell.last), "not due again yet"
    shell.feed(shell.life.sampled({0: lc.TreeSample(12.5, 1 << 20, 3)}, 1.0, 1 << 10, shell.now()))
    assert shell.record().rss == 1 << 20 and shell.state.host_rss == (1 << 20) + (1 << 10)
    assert [type(e) for e in shell.last] == [lc.PublishMetric, lc.PublishStatus]
    for _ in range(2):  # over the limit on 3 samples in a row
        shell.feed(shell.life.sampled({0: lc.TreeSample(1.0, 2 << 20, 3)}, 1.0, 0, shell.now()))
    assert not any(isinstance(e, lc.Stop) for e in shell.last)
    shell.feed(shell.life.sampled({0: lc.TreeSample(1.0, 2 << 20, 3)}, 1.0, 0, shell.now()))
    assert any(isinstance(e, lc.Emit) and e.kind == "cluster_memory" for e in shell.last)
    assert any(isinstance(e, lc.Stop) and e.reason == "memory" for e in shell.last)
    assert shell.record().stop_intent is StopIntent.MEMORY


def test_a_promoted_successor_becomes_the_run_and_ends_the_backoff(tmp_path: Path) -> None:
    shell = FakeShell(tmp_path)
    shell.grant({0: 1})
    shell.exit(1)
    assert shell.record().state is ClusterState.BACKOFF and shell.timers
    token = shell.life.next_token()
    shell.feed(shell.life.promote(0, lc.Promotion(2, token, 4242, shell.clock.time(), shell.clock.monotonic(),
                                                  None, None, True, shell.clock.time()), shell.now()))
    record = shell.record()
    assert (record.state, record.epoch, record.token, record.pid, record.restarts) == (
        ClusterState.READY, 2, token, 4242, 0)
    assert not shell.timers, "the old run's restart is cancelled"
    kinds = [type(e) for e in shell.last]
    assert kinds.index(lc.CancelTimer) < kinds.index(lc.StateChanged) < kinds.index(lc.Send) < kinds.index(lc.Fire)
    assert any(isinstance(e, lc.Send) and e.op == "promote" and e.fields == {"epoch": 2} for e in shell.last)
    shell.advance(5)
    assert not any(isinstance(e, lc.Spawn) for e in shell.last)


def test_a_restart_in_place_names_the_reaped_runs_of_its_epoch_dead(tmp_path: Path) -> None:
    """The Spawn of a restart carries the earlier runs of the same epoch whose exit was seen (reaped); a new epoch
    starts with none."""
    shell = FakeShell(tmp_path)
    shell.grant({0: 1})
    first = next(e for e in shell.last if isinstance(e, lc.Spawn))
    assert first.dead_runs == ()
    shell.exit(1)
    assert not any(isinstance(e, lc.Spawn) for e in shell.last), "no new run before the backoff"
    shell.advance(BACKOFF)
    second = next(e for e in shell.last if isinstance(e, lc.Spawn))
    assert (second.epoch, second.dead_runs) == (1, (first.token,))
    shell.exit(None)  # killed by a signal
    shell.advance(1.0)
    third = next(e for e in shell.last if isinstance(e, lc.Spawn))
    assert (third.epoch, third.dead_runs) == (1, (first.token, second.token))
    shell.exit(1)
    shell.grant({0: 2})  # the grant moved on while in backoff: the new epoch's run has no dead runs
    spawns = [e for e in shell.last if isinstance(e, lc.Spawn)]
    assert [(s.epoch, s.dead_runs) for s in spawns] == [(2, ())], shell.last
