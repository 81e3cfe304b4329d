"""The decision loop's reactions for ``ClusterManager``: IPC messages, exits, restart decisions, ticks.

Everything here runs inside the manager's single loop; it changes records and marks things for the
publisher, and never waits on Redis. The records are the shared :class:`HostState`'s; timers, spawns, stops and
callbacks are asked of the shell (:class:`letsfrag.supervisor.shell.Shell`). The manager calls the entry points
:meth:`Reactions.on_ipc`, :meth:`Reactions.on_exit`, :meth:`Reactions.decide` and :meth:`Reactions.ticker`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

from letsfrag.contract.envelope import MessageType
from letsfrag.contract.exitcodes import CloseCode, ExitCode
from letsfrag.events import Severity
from letsfrag.supervisor import policy
from letsfrag.supervisor.state import Call, ClusterRecord, ClusterState, HostState, StopIntent
from letsfrag.supervisor.watch import TreeSampler

if TYPE_CHECKING:
    from letsfrag.supervisor.handoff import Handovers
    from letsfrag.supervisor.shell import Shell

__all__ = ["Reactions", "tick_interval"]

log = logging.getLogger(__name__)

#: the lines of a crash report kept in ``{ns}:errors:cluster:{cid}``
CRASH_TAIL_LINES = 30
#: after SIGUSR1 (stack dump) a hung cluster gets this long before it is stopped
HANG_DUMP_WAIT = 0.5


def tick_interval(sample_interval: float, hang_timeout: float) -> float:
    """How often the loop checks for hangs (and samples when due): fine enough for the hang timeout."""
    return max(min(sample_interval, hang_timeout / 4, 1.0), 0.02)


def _format_bytes(size: int) -> str:
    return f"{size / 1024 / 1024:.0f} MiB"


class Reactions:
    """How the loop reacts to what cluster processes do; ``sampler`` measures their process trees."""

    def __init__(self, state: HostState, shell: Shell, handovers: Handovers, sampler: TreeSampler) -> None:
        self.state = state
        self.m = shell
        self.handovers = handovers
        self._sampler = sampler
        self._next_sample = 0.0

    # ------------------------------------------------------------------------------------------ IPC

    def on_ipc(self, record: ClusterRecord, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "heartbeat":
            self._on_heartbeat(record, message)
        elif op == "ready":
            self._mark_ready(record)
        elif op == "hello":
            epoch = message.get("epoch")
            if epoch is not None and epoch != record.epoch:
                log.warning("cluster %d says epoch %r, expected %r", record.cluster_id, epoch, record.epoch)
        elif op == "fatal":
            self._on_fatal(record, message)
        elif op == "fenced":
            reason = str(message.get("reason") or "fenced")
            record.extra["fenced"] = reason
            log.warning("cluster %d reports it is fenced: %r", record.cluster_id, reason)
        elif op == "error":
            text = str(message.get("text") or "")[:20000]
            if text and self.m.publisher is not None:
                self.m.publisher.error(record.cluster_id, text)
                record.last_error = _last_line(text)
                self.m.event(Severity.WARNING, "cluster_error",
                            f"cluster {record.cluster_id}: {record.last_error}", cluster=record.cluster_id)
                self.m.publisher.status(record.cluster_id)

    def _on_heartbeat(self, record: ClusterRecord, message: dict[str, Any]) -> None:
        record.last_heartbeat = self.m.clock.time()
        record.last_heartbeat_mono = self.m.clock.monotonic()
        record.hang_signalled = False
        guilds, latency = message.get("guilds"), message.get("latency")
        record.guilds = guilds if isinstance(guilds, int) and not isinstance(guilds, bool) else record.guilds
        record.latency = float(latency) if isinstance(latency, int | float) else record.latency
        ready = message.get("ready")
        if ready is True and record.state is ClusterState.STARTING:
            self._mark_ready(record)
        elif ready is True and record.state is ClusterState.DEGRADED:
            self.m.set_state(record, ClusterState.READY, "all shards ready again")
            record.tracker.on_ready(self.m.clock.monotonic())
        elif ready is False and record.state is ClusterState.READY:
            self.m.set_state(record, ClusterState.DEGRADED, "not every shard is ready")

    def _mark_ready(self, record: ClusterRecord) -> None:
        if record.state not in (ClusterState.STARTING, ClusterState.DEGRADED):
            return
        record.ready_at = self.m.clock.time()
        record.tracker.on_ready(self.m.clock.monotonic())
        took = record.ready_at - (record.started_at or record.ready_at)
        self.m.set_state(record, ClusterState.READY, f"ready in {took:.1f}s")
        self.m.fire("cluster_ready", record.view())

    def _on_fatal(self, record: ClusterRecord, message: dict[str, Any]) -> None:
        code = message.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            reason = policy.fatal_close_reason(code)
        else:
            reason = str(message.get("reason") or "fatal error reported by the cluster")
        record.fatal_reason = reason
        record.last_error = reason
        record.done_epoch = record.epoch
        record.tracker.failed = True
        if code == CloseCode.SHARDING_REQUIRED:  # the broker reshards (letsfrag.contract.reshard); the field tells it
            record.extra["sharding_required"] = True
        self.m.set_state(record, ClusterState.FAILED, reason)
        if record.extra.get("sharding_required") and self.m.publisher is not None:
            self.m.publisher.host_fields(self.m.sharding_fields())
            self.m.publisher.message(MessageType.HOST_HELLO, {"host": self.m.host_id,
                                                              "incarnation": self.m.incarnation})
        self.m.event(Severity.ERROR, "cluster_failed", f"cluster {record.cluster_id} failed: {reason}",
                    cluster=record.cluster_id)
        self.m.fire("cluster_failed", record.view())
        self.m.begin_stop(record, StopIntent.FATAL, reason)

    # ------------------------------------------------------------------------------------------ exits

    async def on_exit(self, record: ClusterRecord, returncode: int | None) -> None:
        process = record.process
        assert process is not None
        leftovers = process.finish()
        record.process = None
        if leftovers:
            self.m.event(Severity.WARNING, "cluster_leftovers",
                        f"cluster {record.cluster_id}: killed {len(leftovers)} leftover process(es) {leftovers}",
                        cluster=record.cluster_id)
        self.m.confirm_gone_later(process)
        info = policy.ExitInfo.from_returncode(returncode, fatal_reason=record.fatal_reason)
        record.exit_code, record.exit_signal = info.code, info.signal
        record.cpu_percent, record.rss, record.threads, record.pss, record.uss = 0.0, 0, 0, 0, 0
        intent, record.stop_intent = record.stop_intent, None
        what = policy.describe_exit(info)
        process.log.note(f"pid {process.pid} {what}")
        self.m.fire("cluster_exit", record.view())
        now = self.m.clock.monotonic()
        if intent in (StopIntent.REVOKE, StopIntent.FENCE, StopIntent.SHUTDOWN):
            record.tracker.on_exit(now, info, requested=True)
            if record.state is not ClusterState.FAILED:
                self.m.set_state(record, ClusterState.STOPPED, f"{intent}: {what}")
            if intent is StopIntent.REVOKE:
                self.m.confirm_stopped(record)
            await self.m.reconcile()
            return
        if intent is StopIntent.RESTART:
            record.tracker.on_exit(now, info, requested=True)
            if self.m.publisher is not None:
                self.m.publisher.restart(record.cluster_id, {
                    "ts": round(self.m.clock.time(), 3), "reason": "restart requested", "exit_code": info.code,
                    "exit_signal": info.signal, "delay": 0.0})
            if not self.state.closing and self.state.desired.get(record.cluster_id) == record.epoch:
                await self.m.spawn(record)
            else:
                self.m.set_state(record, ClusterState.STOPPED, f"restart requested: {what}")
                await self.m.reconcile()
            return
        crashed = info.signal is not None or info.code not in (ExitCode.OK, ExitCode.FENCED)
        if crashed and record.fatal_reason is None:
            self._report_crash(record, what, process.log.tail())
        cause = record.stop_cause if intent in (StopIntent.HUNG, StopIntent.MEMORY) else None
        self.decide(record, info, cause=cause)

    def _report_crash(self, record: ClusterRecord, what: str, tail: list[str]) -> None:
        text = "\n".join(tail[-CRASH_TAIL_LINES:]).strip()
        if text:
            record.last_error = _last_line(text)
        if self.m.publisher is not None:
            self.m.publisher.error(record.cluster_id, f"{what}\n{text}" if text else what)
        self.m.event(Severity.WARNING, "cluster_crash",
                    f"cluster {record.cluster_id} {what}" + (f": {record.last_error}" if text else ""),
                    cluster=record.cluster_id, exit_code=record.exit_code, exit_signal=record.exit_signal)

    def decide(self, record: ClusterRecord, info: policy.ExitInfo, *, cause: str | None) -> None:
        """Ask the restart policy what follows an exit that was not on purpose, and do it."""
        decision = record.tracker.on_exit(self.m.clock.monotonic(), info, cause=cause)
        cid = record.cluster_id
        if decision.action is policy.Action.RESTART and not self.state.closing:
            record.next_restart_at = self.m.clock.time() + decision.delay
            self.m.set_state(record, ClusterState.BACKOFF,
                            f"{decision.reason}; restarting in {decision.delay:.1f}s")
            self.m.schedule_restart(record, decision.delay)
            if self.m.publisher is not None:
                self.m.publisher.restart(cid, {"ts": round(self.m.clock.time(), 3), "reason": decision.reason,
                                             "exit_code": info.code, "exit_signal": info.signal,
                                             "delay": round(decision.delay, 3)})
            self.m.event(Severity.WARNING, "cluster_restart",
                        f"cluster {cid} {decision.reason}; restarting in {decision.delay:.1f}s", cluster=cid)
        elif decision.action is policy.Action.FAIL:
            record.done_epoch = record.epoch
            already = record.state is ClusterState.FAILED
            self.m.set_state(record, ClusterState.FAILED, record.reason if already else decision.reason)
            if not already:
                self.m.event(Severity.ERROR, "cluster_failed", f"cluster {cid} failed: {decision.reason}",
                            cluster=cid)
                self.m.fire("cluster_failed", record.view())
        else:
            record.done_epoch = record.epoch
            self.m.set_state(record, ClusterState.STOPPED, decision.reason)

    # ------------------------------------------------------------------------------------------ ticks

    async def ticker(self) -> None:
        """The tick loop (a core task): every tick, check hangs, logs and (when due) sample, inside the loop."""
        interval = tick_interval(self.m.config.sample_interval, self.m.config.limits.hang_timeout)
        while True:
            await asyncio.sleep(interval)
            self.m.post(Call(self._on_tick))

    def _on_tick(self) -> None:
        now = self.m.clock.monotonic()
        hang_timeout = self.m.config.limits.hang_timeout
        for record in self.state.records.values():
            process = record.process
            if process is None or record.stop_intent is not None:
                continue
            if record.state not in (ClusterState.STARTING, ClusterState.READY, ClusterState.DEGRADED):
                continue
            if not policy.is_hung(now, record.last_heartbeat_mono, record.started_mono, hang_timeout):
                continue
            if not record.hang_signalled:
                record.hang_signalled = True
                record.extra["hang_at"] = now
                process.log.note(f"no heartbeat for {hang_timeout:g}s: SIGUSR1 (stack dump)")
                process.signal(signal.SIGUSR1)
            elif now - record.extra.get("hang_at", now) >= HANG_DUMP_WAIT:
                since = now - (record.last_heartbeat_mono or record.started_mono)
                cause = f"hung: no heartbeat for {since:.0f}s"
                self.m.event(Severity.WARNING, "cluster_hung", f"cluster {record.cluster_id} {cause}",
                            cluster=record.cluster_id)
                self.m.begin_stop(record, StopIntent.HUNG, cause, cause=cause, ask=False)
        self._check_logs()
        if now >= self._next_sample:
            self._next_sample = now + self.m.config.sample_interval
            self._sample()

    def _check_logs(self) -> None:
        """Publish new log write errors; the start of a streak is a warning event and the cluster's last error.

        A cluster whose log cannot be written keeps running (its output is dropped, its last lines are still kept
        in memory for crash reports): a full log disk must not stop the bot.
        """
        for cid, record in self.state.records.items():
            log_file = self.state.logs.get(cid)
            if log_file is None or log_file.write_errors == record.log_errors:
                continue
            lost = log_file.write_errors - record.log_errors
            record.log_errors = log_file.write_errors
            if not record.extra.get("log_failing"):
                record.last_error = f"cannot write its log: {log_file.last_write_error} ({log_file.path})"
                self.m.event(Severity.WARNING, "cluster_log_error",
                              f"cluster {cid} {record.last_error} ({lost} writes lost); it keeps running",
                              cluster=cid)
            record.extra["log_failing"] = log_file.failing
            if self.m.publisher is not None:
                self.m.publisher.status(cid)

    def _sample(self) -> None:
        roots = {cid: r.process.pid for cid, r in self.state.records.items()
                 if r.process is not None and r.process.running}
        samples = self._sampler.sample(roots)
        own_cpu, own_rss = self._sampler.sample_self()
        total_cpu, total_rss = own_cpu, own_rss
        ts = round(self.m.clock.time(), 3)
        for cid, sample in samples.items():
            record = self.state.records[cid]
            if record.process is None:
                continue
            record.process.remember(sample.pids)
            record.cpu_percent, record.rss, record.threads = sample.cpu_percent, sample.rss, sample.threads
            record.pss, record.uss = sample.pss, sample.uss
            total_cpu += sample.cpu_percent
            total_rss += sample.rss
            if self.m.publisher is not None:
                self.m.publisher.metric(cid, {"ts": ts, "cpu": round(sample.cpu_percent, 1), "rss": sample.rss,
                                                   "pss": sample.pss})
                self.m.publisher.status(cid)
            if record.memory.sample(sample.rss) and record.stop_intent is None:
                limit = record.memory.limit or 0
                cause = (f"memory: RSS {_format_bytes(sample.rss)} over the limit {_format_bytes(limit)} "
                         f"on {record.memory.samples} samples")
                self.m.event(Severity.WARNING, "cluster_memory", f"cluster {cid} {cause}", cluster=cid)
                self.m.begin_stop(record, StopIntent.MEMORY, cause, cause=cause)
        self.state.host_cpu, self.state.host_rss = total_cpu, total_rss
        if self.m.launcher is not None:  # a subreaper inherits the orphans of its clusters' trees
            keep = {r.process.pid for r in self.state.records.values() if r.process is not None}
            self.m.launcher.reap_strays(keep | {p.pid for p in self.handovers.processes()})


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
