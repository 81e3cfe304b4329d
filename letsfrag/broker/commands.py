"""Operator commands the leader broker answers on ``{ns}:cb``: ``drain``, ``undrain``, ``rebalance``.

Every reply is ``{"ok": bool, "message": str, ...}``. ``drain`` and ``rebalance`` wait up to the broker's
``command_wait`` for the work to finish and otherwise reply with the progress so far (the work goes on).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from letsfrag.events import Severity

if TYPE_CHECKING:
    from .broker import ClusterBroker
    from .reconcile import Reconciler

__all__ = ["CommandHandler"]


class CommandHandler:
    """Executes one command payload against the broker's reconcile state."""

    def __init__(self, broker: ClusterBroker, reconciler: Reconciler) -> None:
        self.broker = broker
        self.rec = reconciler

    async def handle(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Dispatch on ``payload["action"]``."""
        action = payload.get("action")
        if action in ("drain", "undrain"):
            host = payload.get("host")
            if not isinstance(host, str) or host not in self.rec.hosts:
                known = ", ".join(sorted(self.rec.hosts)) or "none"
                return {"ok": False, "message": f"{action}: unknown host {host!r} (known hosts: {known})"}
            return await (self.drain(host) if action == "drain" else self.undrain(host))
        if action == "rebalance":
            return await self.rebalance()
        return {"ok": False, "message": f"unknown action {action!r}; the broker accepts drain, undrain, rebalance"}

    async def _wait(self, done: Any) -> bool:
        """Wait tick by tick until ``done()`` is true or ``command_wait`` passed."""
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + self.broker.command_wait
        while not done():
            left = deadline - loop_time()
            if left <= 0:
                return False
            self.broker.wake()
            await self.broker.wait_tick(min(left, self.broker.interval * 2))
        return True

    async def drain(self, host: str) -> dict[str, Any]:
        """Mark ``host`` draining (capacity 0) and move its clusters away one at a time."""
        rec = self.rec
        rec.draining.add(host)
        rec.drain_blocked.discard(host)
        await rec.store.hset(rec.store.keys.host(host), {"state": "draining"})
        total = len(rec.held_by(host))
        await self.broker._event(Severity.INFO, "drain", f"draining host {host}: {total} cluster(s) to move",
                                 host=host)
        finished = await self._wait(lambda: not rec.held_by(host) or host in rec.drain_blocked)
        left = len(rec.held_by(host))
        if left == 0:
            return {"ok": True, "done": True, "remaining": 0,
                    "message": f"host {host} drained: {total} cluster(s) moved"}
        if host in rec.drain_blocked:
            return {"ok": False, "done": False, "remaining": left,
                    "message": f"cannot finish draining {host}: no other host has room; {left} cluster(s) stay"}
        assert not finished
        return {"ok": True, "done": False, "remaining": left,
                "message": f"draining host {host}: {total - left} of {total} cluster(s) moved so far; continuing"}

    async def undrain(self, host: str) -> dict[str, Any]:
        """Let ``host`` receive clusters again (with ``rebalance: on-join`` clusters move back to it)."""
        rec = self.rec
        was = host in rec.draining or rec.hosts[host].state == "draining"
        rec.draining.discard(host)
        rec.drain_blocked.discard(host)
        rec.rebalance_blocked = False
        if rec.hosts[host].state == "draining":
            await rec.store.hset(rec.store.keys.host(host), {"state": "up"})
        self.broker.wake()
        await self.broker._event(Severity.INFO, "undrain", f"host {host} accepts clusters again", host=host)
        return {"ok": True, "message": f"host {host} undrained" if was else f"host {host} was not draining"}

    async def rebalance(self) -> dict[str, Any]:
        """Move clusters one at a time until the load is balanced."""
        rec = self.rec
        rec.rebalance_requested = True
        rec.rebalance_blocked = False
        await self.broker._event(Severity.INFO, "rebalance", "rebalance requested")
        done = await self._wait(lambda: not rec.rebalance_requested and not rec.moves.pending)
        if done:
            return {"ok": True, "done": True, "message": "clusters are balanced"}
        return {"ok": True, "done": False,
                "message": f"rebalancing: {len(rec.moves.pending)} move(s) in progress; continuing"}
