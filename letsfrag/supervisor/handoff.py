"""Successor and retiring processes of ``ClusterManager``: the supervisor's side of a planned handover.

The one home of successor state. :class:`SuccessorBook` keeps, apart from the cluster records:

- **successors** — a process started for a ``preparing`` handover record naming this host (``LETSFRAG_HANDOVER=1``,
  the record's epoch), reported in the host record's ``successors`` field (``starting`` → ``ready`` → gone,
  ``failed`` when it exits before the switch) with a ``host_hello`` to the broker on every change;
- **retiring** processes — the old process of a cluster restarted in place, after its successor was promoted: it
  is stopped gracefully (IPC ``stop``, ``stop_timeout``, then killed); its exit never reaches the restart policy
  and is confirmed with ``cluster_stopped`` for the *old* epoch.

What to do is decided by :func:`letsfrag.supervisor.successors.plan_successors` (pure); this class carries it
out inside the manager's decision loop (it never waits on Redis), reading the shared :class:`HostState` and asking
the shell (:class:`letsfrag.supervisor.shell.Shell`) to launch, stop and report.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from letsfrag.contract.envelope import MessageType
from letsfrag.contract.handover import SUCCESSORS_FIELD, HandoverRecord, SuccessorReport, SuccessorState
from letsfrag.contract.ipc_ops import IpcOp
from letsfrag.events import Severity
from letsfrag.supervisor import policy
from letsfrag.supervisor.lifecycle import Promotion
from letsfrag.supervisor.process import run_stop
from letsfrag.supervisor.state import ClusterState, HostState, IpcMessage, ProcessExited
from letsfrag.supervisor.successors import SuccessorAction, SuccessorFacts, plan_successors

if TYPE_CHECKING:
    from letsfrag.supervisor.process import ClusterProcess
    from letsfrag.supervisor.shell import Shell

__all__ = ["Retiring", "Successor", "SuccessorBook"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Successor:
    """A successor process of one cluster (or, once it exited before the switch, its kept ``failed`` report)."""

    cluster_id: int
    epoch: int
    record: HandoverRecord
    token: int
    process: ClusterProcess | None = None
    state: SuccessorState = SuccessorState.STARTING
    reason: str = ""
    stopping: bool = False
    started_at: float | None = None
    started_mono: float = 0.0
    ready_at: float | None = None
    last_heartbeat: float | None = None
    last_heartbeat_mono: float | None = None
    pid: int | None = None

    def facts(self) -> SuccessorFacts:
        return SuccessorFacts(self.epoch, self.state, alive=self.process is not None, stopping=self.stopping)

    def report(self) -> SuccessorReport:
        return SuccessorReport(self.cluster_id, self.epoch, self.state, pid=self.pid, reason=self.reason)


@dataclass(eq=False)
class Retiring:
    """The old process of a cluster whose successor on this host was promoted: stopping, then confirmed."""

    cluster_id: int
    epoch: int | None
    token: int
    process: ClusterProcess


class SuccessorBook:
    """Successors and retiring processes of the supervisor's clusters."""

    def __init__(self, state: HostState, shell: Shell) -> None:
        self.state = state
        self.m = shell
        self.successors: dict[int, Successor] = {}
        #: retiring processes by token
        self.retiring: dict[int, Retiring] = {}
        #: the handover records last read (every host's)
        self.records: dict[int, HandoverRecord] = {}

    # ------------------------------------------------------------------------------------------ reading

    def views(self) -> dict[int, SuccessorReport]:
        """The reports of this host's successors (what the ``successors`` field holds)."""
        return {cid: s.report() for cid, s in sorted(self.successors.items())}

    def field_value(self) -> str:
        """The host record's ``successors`` field."""
        return SuccessorReport.dump(self.views())

    def processes(self) -> Iterator[ClusterProcess]:
        """Every successor and retiring process still running."""
        for successor in self.successors.values():
            if successor.process is not None:
                yield successor.process
        for retiring in self.retiring.values():
            yield retiring.process

    def owns(self, cluster_id: int, token: int) -> bool:
        """Is an event with this ``token`` one of a successor or a retiring process?"""
        successor = self.successors.get(cluster_id)
        return (successor is not None and successor.token == token) or token in self.retiring

    # ------------------------------------------------------------------------------------------ the plan

    async def apply(self, records: Mapping[int, HandoverRecord], grants: Mapping[int, int]) -> None:
        """Carry out :func:`plan_successors` for the records and grants just read (before the grants reconcile)."""
        self.records = dict(records)
        main_epochs = {cid: r.epoch for cid, r in self.state.records.items()}
        facts = {cid: s.facts() for cid, s in self.successors.items()}
        for step in plan_successors(self.m.host_id, records, grants, facts, main_epochs):
            if step.step is SuccessorAction.SPAWN:
                assert step.record is not None
                await self._spawn(step.record)
            elif step.step is SuccessorAction.PROMOTE:
                await self._promote(self.successors[step.cluster])
            elif step.step is SuccessorAction.ROLL_BACK:
                self.stop(self.successors[step.cluster], step.reason)
            elif step.step is SuccessorAction.DROP:
                self.successors.pop(step.cluster, None)
                self._publish()

    def stop_all(self, reason: str, *, timeout: float | None = None) -> None:
        """Stop every successor (shutdown, fencing); failed reports are dropped."""
        dropped = False
        for successor in list(self.successors.values()):
            if successor.process is None:
                del self.successors[successor.cluster_id]
                dropped = True
            else:
                self.stop(successor, reason, timeout=timeout)
        if dropped:
            self._publish()

    def kill_all(self) -> None:
        for process in self.processes():
            process.kill_all()

    # ------------------------------------------------------------------------------------------ steps

    async def _spawn(self, record: HandoverRecord) -> None:
        m = self.m
        layout = record.layout_of(self.state.layout) if self.state.layout is not None else None
        if layout is None or not layout.shards_of(record.cluster):
            log.warning("handover of cluster %d names this host but the cluster is outside the layout; ignored",
                        record.cluster)
            return
        successor = Successor(record.cluster, record.epoch, record, m.next_token(),
                              started_at=m.clock.time(), started_mono=m.clock.monotonic())
        self.successors[record.cluster] = successor
        try:
            process = await m.launch(record.cluster, layout.shards_of(record.cluster), record.epoch,
                                      successor.token, handover=True, layout=layout)
        except OSError as exc:
            successor.state, successor.reason = SuccessorState.FAILED, f"cannot start {m.program()}: {exc}"
            m.event(Severity.WARNING, "successor_failed", f"cluster {record.cluster}: the successor for epoch "
                     f"{record.epoch} cannot start: {exc}", cluster=record.cluster, epoch=record.epoch)
            self._publish()
            return
        successor.process, successor.pid = process, process.pid
        successor.started_mono = m.clock.monotonic()
        process.log.note(f"started successor pid {process.pid} (cluster {record.cluster}, epoch {record.epoch}, "
                         f"{record.reason} from {record.from_host} epoch {record.from_epoch})")
        log.info("cluster %d: successor pid %d started for epoch %d (%s)", record.cluster, process.pid,
                 record.epoch, record.reason)
        self._publish()

    def stop(self, successor: Successor, reason: str, *, timeout: float | None = None) -> None:
        """Stop a successor gracefully; its report is dropped once it exited."""
        process = successor.process
        if process is None or successor.stopping:
            return
        successor.stopping = True
        successor.reason = successor.reason or reason
        process.log.note(f"stopping successor pid {process.pid}: {reason}")
        log.info("cluster %d: stopping successor pid %d (epoch %d): %s", successor.cluster_id, process.pid,
                 successor.epoch, reason)
        stop_timeout = self.m.config.limits.stop_timeout if timeout is None else timeout
        self.m.background(run_stop(process, ask=True, reason="handover", stop_timeout=stop_timeout))

    async def _promote(self, successor: Successor) -> None:
        """The assignment names the successor: it becomes the cluster's process; an old one here retires."""
        m = self.m
        process = successor.process
        assert process is not None
        cid = successor.cluster_id
        del self.successors[cid]
        record = m.record_of(cid)
        old_epoch = record.epoch
        old = m.processes.get(cid)
        ran_here = old is not None or record.state is ClusterState.BACKOFF
        if old is not None:
            self._retire(record.cluster_id, old_epoch, record.token, old, running=record.stopping)
        await m.promote(cid, process, Promotion(
            successor.epoch, successor.token, process.pid, successor.started_at, successor.started_mono,
            successor.last_heartbeat, successor.last_heartbeat_mono, successor.state is SuccessorState.READY,
            successor.ready_at))
        self._publish()
        if old is None and (ran_here or successor.record.from_host == m.host_id):
            # the old epoch has no process here (it crashed and waited in backoff): its end is confirmed now
            self._confirm_stopped(cid, successor.record.from_epoch if not ran_here else old_epoch)

    def _retire(self, cluster_id: int, epoch: int | None, token: int, process: ClusterProcess, *,
                running: bool) -> None:
        self.retiring[token] = Retiring(cluster_id, epoch, token, process)
        process.log.note(f"retiring pid {process.pid} (epoch {epoch}): its successor took over")
        if not running:
            self.m.background(run_stop(process, ask=True, reason="handover",
                                                     stop_timeout=self.m.config.limits.stop_timeout))

    def _confirm_stopped(self, cluster_id: int, epoch: int | None) -> None:
        publisher = self.m.publisher
        if publisher is None:
            return
        publisher.host_fields({"running": self.m.running_json()})
        publisher.message(MessageType.CLUSTER_STOPPED, {"host": self.m.host_id, "cluster": cluster_id,
                                                        "epoch": epoch})

    # ------------------------------------------------------------------------------------------ events

    def on_item(self, item: IpcMessage | ProcessExited) -> None:
        """An IPC message or exit of a successor or retiring process (see :meth:`owns`)."""
        retiring = self.retiring.get(item.token)
        if retiring is not None:
            if isinstance(item, ProcessExited):
                self._retired(retiring, item.returncode)
            return
        successor = self.successors[item.cluster_id]
        if isinstance(item, IpcMessage):
            self._on_ipc(successor, item.message)
        else:
            self._exited(successor, item.returncode)

    def _on_ipc(self, successor: Successor, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == IpcOp.HEARTBEAT:
            successor.last_heartbeat = self.m.clock.time()
            successor.last_heartbeat_mono = self.m.clock.monotonic()
            if message.get("ready") is True:
                self._ready(successor)
        elif op == IpcOp.READY:
            self._ready(successor)
        elif op == IpcOp.FATAL:
            code = message.get("code")
            reason = (policy.fatal_close_reason(code) if isinstance(code, int) and not isinstance(code, bool)
                      else str(message.get("reason") or "fatal error reported by the successor"))
            self._fail(successor, reason)
            self.stop(successor, reason)  # its exit keeps the failed report
        elif op == IpcOp.ERROR:
            text = str(message.get("text") or "")[:20000]
            if text and self.m.publisher is not None:
                self.m.publisher.error(successor.cluster_id, text)

    def _ready(self, successor: Successor) -> None:
        if successor.state is not SuccessorState.STARTING or successor.stopping:
            return
        successor.state = SuccessorState.READY
        successor.ready_at = self.m.clock.time()
        took = successor.ready_at - (successor.started_at or successor.ready_at)
        log.info("cluster %d: successor pid %s ready in %.1fs (epoch %d)", successor.cluster_id, successor.pid,
                 took, successor.epoch)
        self._publish()

    def _fail(self, successor: Successor, reason: str) -> None:
        if successor.state is SuccessorState.FAILED:
            return
        successor.state, successor.reason = SuccessorState.FAILED, reason
        self.m.event(Severity.WARNING, "successor_failed", f"cluster {successor.cluster_id}: the successor for "
                      f"epoch {successor.epoch} failed: {reason}", cluster=successor.cluster_id,
                      epoch=successor.epoch)
        self._publish()

    def _exited(self, successor: Successor, returncode: int | None) -> None:
        process = successor.process
        assert process is not None
        process.finish()
        self.m.confirm_gone_later(process)
        successor.process = None
        what = policy.describe_exit(policy.ExitInfo.from_returncode(returncode))
        process.log.note(f"successor pid {process.pid} {what}")
        if successor.stopping and successor.state is not SuccessorState.FAILED:
            del self.successors[successor.cluster_id]
            self._publish()
            return
        self._fail(successor, f"exited before the switch: {what}")

    def _retired(self, retiring: Retiring, returncode: int | None) -> None:
        del self.retiring[retiring.token]
        process = retiring.process
        process.finish()
        self.m.confirm_gone_later(process)
        what = policy.describe_exit(policy.ExitInfo.from_returncode(returncode))
        process.log.note(f"retired pid {process.pid} {what}")
        log.info("cluster %d: retired pid %d (epoch %s) %s", retiring.cluster_id, process.pid, retiring.epoch, what)
        self._confirm_stopped(retiring.cluster_id, retiring.epoch)
        self.m.pulse()

    # ------------------------------------------------------------------------------------------ publishing

    def _publish(self) -> None:
        """Write the ``successors`` field and ring the broker (``host_hello``)."""
        self.m.pulse()
        publisher = self.m.publisher
        if publisher is None:
            return
        publisher.host_fields({SUCCESSORS_FIELD: self.field_value()})
        publisher.message(MessageType.HOST_HELLO, {"host": self.m.host_id, "incarnation": self.m.incarnation})
