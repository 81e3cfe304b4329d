"""Operator commands on ``{ns}:cm:{host}``: ``restart``, ``restart_all``, ``rolling_restart``.

Each is a request; the reply is ``{"ok": bool, "message": str, ...}``. State changes run inside the
manager's loop (:meth:`Shell.call`, then :meth:`Shell.restart_cluster`: the decision is the lifecycle's,
:meth:`letsfrag.supervisor.lifecycle.Lifecycle.request_restart`); waiting for READY happens outside it. The handler
reads the shared :class:`HostState`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from letsfrag.contract.actions import HostAction
from letsfrag.supervisor.state import ClusterState, HostState

if TYPE_CHECKING:
    from letsfrag.supervisor.shell import Shell

__all__ = ["DEFAULT_WAIT", "SupervisorCommands"]

#: seconds a restart waits for the cluster to be READY again (payload ``timeout`` overrides it)
DEFAULT_WAIT = 120.0


def _reply(ok: bool, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": ok, "message": message, **extra}


class SupervisorCommands:
    """Carries out commands against one supervisor (its shared state and its shell)."""

    def __init__(self, state: HostState, shell: Shell) -> None:
        self.state = state
        self.shell = shell
        self._rolling = asyncio.Lock()

    async def handle(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Run one command payload and return its reply value."""
        action = payload.get("action")
        try:
            timeout = float(payload.get("timeout", DEFAULT_WAIT))
        except (TypeError, ValueError):
            return _reply(False, f"timeout must be a number of seconds, found {payload.get('timeout')!r}")
        wait = payload.get("wait", True) is not False
        if action == HostAction.RESTART:
            cluster = payload.get("cluster")
            if isinstance(cluster, bool) or not isinstance(cluster, int):
                return _reply(False, f"restart needs an integer 'cluster', found {cluster!r}")
            return await self.restart(cluster, wait=wait, timeout=timeout)
        if action == HostAction.RESTART_ALL:
            return await self.restart_all(wait=wait, timeout=timeout)
        if action == HostAction.ROLLING_RESTART:
            return await self.rolling_restart(timeout=timeout)
        return _reply(False, f"unknown action {action!r}; expected one of {', '.join(HostAction)}")

    # ----------------------------------------------------------------------------------------------

    async def restart(self, cluster_id: int, *, wait: bool = True, timeout: float = DEFAULT_WAIT) -> dict[str, Any]:
        """Restart one cluster (clears FAILED); with ``wait``, reply once it is READY again or failed."""
        m, state = self.shell, self.state

        ok, message, before = await m.call(lambda: m.restart_cluster(cluster_id))
        if not ok or not wait:
            return _reply(ok, message, cluster=cluster_id)
        loop = asyncio.get_running_loop()
        started = loop.time()

        def settled() -> bool:
            record = state.records.get(cluster_id)
            if record is None or cluster_id not in state.desired:
                return True
            return record.spawns > before and record.state in (
                ClusterState.READY, ClusterState.FAILED, ClusterState.STOPPED)

        if not await m.wait_for(settled, timeout):
            record = state.records.get(cluster_id)
            where = record.state if record else "unknown"
            return _reply(False, f"cluster {cluster_id} not ready after {timeout:g}s (state {where})",
                          cluster=cluster_id)
        record = state.records.get(cluster_id)
        if record is None or cluster_id not in state.desired:
            return _reply(False, f"cluster {cluster_id} was revoked from host {m.host_id}", cluster=cluster_id)
        if record.state is not ClusterState.READY:
            return _reply(False, f"cluster {cluster_id} {record.state}: {record.reason}", cluster=cluster_id)
        took = loop.time() - started
        return _reply(True, f"cluster {cluster_id} restarted (pid {record.pid}) and ready in {took:.1f}s",
                      cluster=cluster_id, pid=record.pid)

    async def restart_all(self, *, wait: bool = True, timeout: float = DEFAULT_WAIT) -> dict[str, Any]:
        """Restart every cluster of this host at once (the identify queue paces their sessions)."""
        clusters = sorted(self.state.desired)
        if not clusters:
            return _reply(True, f"host {self.shell.host_id} runs no clusters", clusters=[])
        results = await asyncio.gather(*(self.restart(cid, wait=wait, timeout=timeout) for cid in clusters))
        failed = [r["cluster"] for r in results if not r["ok"]]
        if failed:
            details = "; ".join(r["message"] for r in results if not r["ok"])
            return _reply(False, f"{len(failed)} of {len(clusters)} clusters did not come back: {details}",
                          clusters=clusters, failed=failed)
        verb = "restarted and ready" if wait else "restarting"
        return _reply(True, f"{len(clusters)} clusters {verb}", clusters=clusters)

    async def rolling_restart(self, *, timeout: float = DEFAULT_WAIT) -> dict[str, Any]:
        """One cluster at a time, the next only once the previous is READY; stop at the first failure."""
        if self._rolling.locked():
            return _reply(False, f"a rolling restart is already running on host {self.shell.host_id}")
        async with self._rolling:
            done: list[int] = []
            for cluster_id in sorted(self.state.desired):
                result = await self.restart(cluster_id, wait=True, timeout=timeout)
                if not result["ok"]:
                    return _reply(False, f"rolling restart stopped at cluster {cluster_id}: {result['message']}"
                                  f" (restarted before it: {done or 'none'})", restarted=done, failed=cluster_id)
                done.append(cluster_id)
            return _reply(True, f"rolling restart done: {len(done)} clusters restarted one at a time",
                          restarted=done)
