"""Stopping for ``ClusterManager``: one cluster's stop sequence, and the host's shutdown.

:meth:`Stopper.begin_stop` runs inside the manager's decision loop (restart, revoke, fence, hang, memory and
shutdown all stop a cluster through it). :meth:`Stopper.close` is the graceful leave: first, when another host is
up and a broker listens, ask the broker to hand this host's clusters elsewhere (``host_leave`` with ``hand_off``)
and wait until nothing is granted or runs here, the broker says no host has room (``handoff_blocked``) or
``limits.leave_timeout`` is over (:func:`letsfrag.supervisor.successors.leave_verdict`); then mark the host
``leaving``, stop every cluster left through the loop, wait for them (killing what outlives the limit), cancel
the lease, publish the last changes and leave the host set. SIGTERM/SIGINT start that close; a second one ends
the wait and kills every cluster at once. ``close(force=True)`` skips the hand-off.

The order of that close is the manager's (:meth:`ClusterManager.close`: it owns the loops, tasks, the bus and the
log files it lets go of); the steps that decide about clusters are here: :meth:`Stopper.hand_off`,
:meth:`Stopper.stop_everything`, :meth:`Stopper.force`. The stopper reads the shared :class:`HostState` and asks
the shell (:class:`letsfrag.supervisor.shell.Shell`) for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

from letsfrag.events import Severity
from letsfrag.supervisor.process import run_stop
from letsfrag.supervisor.state import FINAL_STOP_INTENTS, ClusterRecord, ClusterState, HostState, StopIntent
from letsfrag.supervisor.successors import LeaveVerdict, leave_verdict

if TYPE_CHECKING:
    from letsfrag.supervisor.handoff import Handovers
    from letsfrag.supervisor.shell import Shell

__all__ = ["Stopper"]

log = logging.getLogger(__name__)




class Stopper:
    """Stops the supervisor's clusters, one or all, and hands the host's clusters off when it leaves."""

    def __init__(self, state: HostState, shell: Shell, handovers: Handovers) -> None:
        self.state = state
        self.m = shell
        self.handovers = handovers
        self._signals = 0
        #: True while the host waits for the broker to hand its clusters away (grants still apply)
        self.handing_off = False
        self._forced = asyncio.Event()

    # ------------------------------------------------------------------------------------------ one cluster

    def begin_stop(self, record: ClusterRecord, intent: StopIntent, reason: str, *, cause: str | None = None,
                   ask: bool = True, timeout: float | None = None) -> None:
        """Start stopping ``record``'s process for ``intent`` (a no-op without a process)."""
        process = record.process
        if process is None:
            return
        if record.stop_task is not None and not record.stop_task.done():
            # already stopping: a stronger purpose (revoke, fence, shutdown) replaces a weaker one
            if intent in FINAL_STOP_INTENTS and record.stop_intent not in FINAL_STOP_INTENTS:
                record.stop_intent, record.stop_cause = intent, cause
            if timeout is not None:
                self.m.background(process.stop(ask=False, reason=str(intent), stop_timeout=timeout))
            return
        record.stop_intent, record.stop_cause = intent, cause
        if record.state is not ClusterState.FAILED:
            self.m.set_state(record, ClusterState.STOPPING, reason)
        stop_timeout = self.m.config.limits.stop_timeout if timeout is None else timeout
        record.stop_task = asyncio.create_task(
            run_stop(process, ask=ask, reason=str(intent), stop_timeout=stop_timeout))

    def kill_everything(self) -> None:
        """SIGKILL every cluster's process tree now."""
        for record in self.state.records.values():
            if record.process is not None:
                record.process.kill_all()
        self.handovers.kill_all()

    def alive(self) -> bool:
        """Does any process (a cluster's, a successor or a retiring one) still run here?"""
        return (any(r.process is not None for r in self.state.records.values())
                or any(True for _ in self.handovers.processes()))

    # ------------------------------------------------------------------------------------------ the host

    def force(self) -> None:
        """A forced close while closing (a second signal, ``close(force=True)``): end the hand-off, kill all."""
        self._forced.set()
        self.kill_everything()

    async def hand_off(self) -> None:
        """Ask the broker to hand this host's clusters to other hosts and wait (see the module docstring).

        Called by the manager's close once its loops run (outside the decision loop)."""
        m, state = self.m, self.state
        agent = m.agent
        timeout = m.config.limits.leave_timeout
        if agent is None or not agent.registered or timeout <= 0 or not self.alive():
            return
        clusters = state.alive_clusters()
        if not await agent.others_up():
            self._left_over(clusters, "no other host is up", Severity.INFO)
            return
        self.handing_off = True
        try:
            if (problem := await agent.ask_to_leave()) is not None:
                self._left_over(clusters, f"cannot ask the broker to hand them over: {problem}")
                return
            m.event(Severity.INFO, "host_handing_off", f"host {m.host_id} is leaving: handing clusters {clusters} "
                    f"to other hosts (up to {timeout:g}s)", host=m.host_id)
            started = m.clock.monotonic()
            others_up = True

            def verdict() -> LeaveVerdict:
                return leave_verdict(now=m.clock.monotonic(), started=started, timeout=timeout,
                                     granted=len(state.desired), running=int(self.alive()),
                                     blocked=agent.handoff_blocked, forced=self._forced.is_set(),
                                     others_up=others_up)

            # every renewal interval: is someone still there to take the clusters (all hosts may be leaving)?
            check = max(agent.heartbeat_interval, 0.5)
            while (result := verdict()) is LeaveVerdict.WAIT:
                await m.wait_for(lambda: verdict() is not LeaveVerdict.WAIT, check)
                if verdict() is LeaveVerdict.WAIT:
                    others_up = await agent.others_up()
        finally:
            self.handing_off = False
        left = state.alive_clusters()
        took = m.clock.monotonic() - started
        if result is LeaveVerdict.HANDED_OFF:
            m.event(Severity.INFO, "host_handed_off", f"host {m.host_id} handed every cluster to other hosts in "
                    f"{took:.1f}s", host=m.host_id)
        elif result is LeaveVerdict.BLOCKED:
            self._left_over(left, f"no other host has room ({agent.handoff_blocked})")
        elif result is LeaveVerdict.FORCED:
            self._left_over(left, "a second signal")
        elif result is LeaveVerdict.ALONE:
            self._left_over(left, "no other host is up any more")
        else:
            self._left_over(left, f"not handed over within limits.leave_timeout ({timeout:g}s)")

    def _left_over(self, clusters: list[int], why: str, severity: Severity = Severity.WARNING) -> None:
        """Say why clusters are stopped instead of handed over (their shards go offline)."""
        if not clusters:
            return
        self.m.event(severity, "host_leave_stopping", f"host {self.m.host_id}: {why}: stopping clusters "
                     f"{clusters} (their shards go offline)", host=self.m.host_id)

    async def stop_everything(self, force: bool) -> None:
        """Forget the grants, stop every cluster and successor through the loop and wait for them (killing what
        outlives the limit). Called by the manager's close once its loops run (outside the decision loop)."""
        m, state = self.m, self.state

        def stop_all() -> None:
            state.desired = {}
            self.handovers.stop_all("supervisor shutting down")
            for record in state.records.values():
                if record.process is not None:
                    self.begin_stop(record, StopIntent.SHUTDOWN, "supervisor shutting down")
                elif record.state is ClusterState.BACKOFF:
                    m.cancel_backoff(record)
                    m.set_state(record, ClusterState.STOPPED, "supervisor shutting down")
            if force:
                self.kill_everything()

        await m.call(stop_all)
        limit = m.config.limits.stop_timeout * 1.5 + 5.0
        if not await m.wait_for(lambda: not self.alive(), limit):
            self.kill_everything()
            await m.wait_for(lambda: not self.alive(), 5.0)

    # ------------------------------------------------------------------------------------------ signals

    def install_signals(self) -> None:
        """SIGTERM/SIGINT close the manager; a second one kills every cluster."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def remove_signals(self) -> None:
        """Undo :meth:`install_signals`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("received %s: stopping every cluster (again to force)", signal.Signals(sig).name)
            self.m.background(self.m.close())
        else:
            log.warning("received %s again: killing every cluster now", signal.Signals(sig).name)
            self.force()
