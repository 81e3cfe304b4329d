"""Operator commands the leader broker answers on ``{ns}:cb``: ``drain``, ``undrain``, ``rebalance``,
``restart`` (one cluster, in place, by a handover), ``rolling_restart`` (every cluster of a host, one handover
at a time, the next after the previous switch) and ``reshard`` (``{"shards": N}`` or ``{"recommended": true}``:
replies with the plan of :mod:`letsfrag.broker.reshard_plan`, ``lines`` to print, or the refusal; with
``"execute": true`` and an optional ``timeout`` (seconds the new generation has to become ready, default the
broker's ``handover_timeout``) it runs the reshard and replies once it finished: ``ok`` when switched and retired,
not ``ok`` after a rollback, with ``steps``, ``state`` and the ``cluster`` to blame).

Every reply is ``{"ok": bool, "message": str, ...}``. ``drain`` and ``rebalance`` wait up to the broker's
``command_wait`` for the work to finish and otherwise reply with the progress so far (the work goes on).
``restart`` and ``rolling_restart`` wait up to the payload's ``wait`` seconds (default ``command_wait``, at most
``max_command_wait``): ``ok`` once switched, not ``ok`` after a rollback or a refusal (the message names the
cluster and the reason). When the cluster's host does not take part in handovers (an older supervisor) or does
not run it (e.g. FAILED), the reply carries ``"fallback": "host"`` and ``host``: the caller restarts it through
that host's own command, as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from letsfrag.contract.actions import BrokerAction
from letsfrag.contract.handover import HandoverReason
from letsfrag.contract.states import HostRecordState
from letsfrag.events import Severity

if TYPE_CHECKING:
    from .reconcile import EventSink, Reconciler

__all__ = ["BrokerCommands"]


class BrokerCommands:
    """Executes one command payload against the broker's reconcile state.

    Given the reconciler and callbacks into the broker, like the :class:`~letsfrag.broker.reconcile.Reconciler`
    (it does not know the broker): ``event`` emits an operator event, ``wake`` runs the broker's next tick now,
    ``wait_tick(timeout)`` waits until that tick finished, ``recommended()`` is the shard count ``/gateway/bot``
    recommended (None: unknown). ``interval`` is the broker's tick interval; ``command_wait``,
    ``max_command_wait`` and ``handover_timeout`` are the broker's settings of those names.
    """

    def __init__(self, reconciler: Reconciler, *, event: EventSink, wake: Callable[[], None],
                 wait_tick: Callable[[float], Awaitable[None]], recommended: Callable[[], int | None],
                 interval: float, command_wait: float, max_command_wait: float, handover_timeout: float) -> None:
        self.rec = reconciler
        self._event = event
        self._wake = wake
        self._wait_tick = wait_tick
        self._recommended = recommended
        self.interval = interval
        self.command_wait = command_wait
        self.max_command_wait = max_command_wait
        self.handover_timeout = handover_timeout

    async def handle(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Dispatch on ``payload["action"]``."""
        action = payload.get("action")
        if action in (BrokerAction.DRAIN, BrokerAction.UNDRAIN):
            host = payload.get("host")
            if not isinstance(host, str) or host not in self.rec.hosts:
                known = ", ".join(sorted(self.rec.hosts)) or "none"
                return {"ok": False, "message": f"{action}: unknown host {host!r} (known hosts: {known})"}
            return await (self.drain(host) if action == BrokerAction.DRAIN else self.undrain(host))
        if action == BrokerAction.REBALANCE:
            return await self.rebalance()
        if action == BrokerAction.RESTART:
            cluster = payload.get("cluster")
            if isinstance(cluster, bool) or not isinstance(cluster, int) or cluster < 0:
                return {"ok": False, "message": f"restart: expected a cluster id >= 0, found {cluster!r}"}
            return await self.restart(cluster, self._wait_of(payload))
        if action == BrokerAction.ROLLING_RESTART:
            host = payload.get("host")
            if not isinstance(host, str) or host not in self.rec.hosts:
                known = ", ".join(sorted(self.rec.hosts)) or "none"
                return {"ok": False, "message": f"rolling_restart: unknown host {host!r} (known hosts: {known})"}
            return await self.rolling_restart(host, self._wait_of(payload))
        if action == BrokerAction.RESHARD:
            return await self.reshard(payload)
        return {"ok": False, "message": f"unknown action {action!r}; the broker accepts {', '.join(BrokerAction)}"}

    async def reshard(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The plan of a reshard (or the refusal) from the leader's live state; with ``"execute": true`` the
        reshard itself (:mod:`letsfrag.contract.reshard`): the reply comes once switched and retired (``ok``) or rolled
        back (not ``ok``, naming the cluster), or when ``wait`` ends first (``done`` false: it goes on)."""
        shards = payload.get("shards")
        use_recommended = payload.get("recommended") is True
        if not use_recommended and (isinstance(shards, bool) or not isinstance(shards, int)):
            return {"ok": False, "refused": True, "executed": False,
                    "message": f"reshard: expected \"shards\" (a number) or \"recommended\": true, found {shards!r}"}
        plan_args: dict[str, Any] = {"shards": shards if not use_recommended else None,
                                     "recommended": self._recommended(),
                                     "use_recommended": use_recommended}
        if payload.get("execute") is not True:
            return {**self.rec.plan_reshard(**plan_args).to_dict(), "executed": False}
        timeout = payload.get("timeout")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            timeout = self.handover_timeout
        rec = self.rec
        serial = rec.request_reshard(float(timeout), **plan_args)
        entry = rec.reshards[serial]
        await self._wait(lambda: entry["state"] in ("refused", "done", "rolled_back"), self._wait_of(payload))
        if entry["state"] in ("refused", "done", "rolled_back"):
            rec.reshards.pop(serial, None)
        plan = entry.get("plan")
        reply: dict[str, Any] = dict(plan) if isinstance(plan, dict) else {}
        state = str(entry["state"])
        reply.update(executed=state not in ("queued", "refused"), state=state, ok=state == "done",
                     done=state in ("refused", "done", "rolled_back"), steps=list(entry["steps"]),  # type: ignore[call-overload]
                     refused=state == "refused", message=str(entry["message"]))
        if "cluster" in entry:
            reply["cluster"] = entry["cluster"]
        if not reply["done"]:
            reply["message"] = f"{entry['message']}; no end within the wait (the reshard goes on)"
        return reply

    def _wait_of(self, payload: dict[str, Any]) -> float:
        wait = payload.get("wait")
        if isinstance(wait, bool) or not isinstance(wait, int | float) or wait <= 0:
            return self.command_wait
        return min(float(wait), self.max_command_wait)

    async def _wait(self, done: Any, wait: float | None = None) -> bool:
        """Wait tick by tick until ``done()`` is true or ``wait`` (default ``command_wait``) passed on the
        reconciler's clock."""
        now = self.rec.clock.monotonic
        deadline = now() + (self.command_wait if wait is None else wait)
        while not done():
            left = deadline - now()
            if left <= 0:
                return False
            self._wake()
            await self._wait_tick(min(left, self.interval * 2))
        return True

    async def drain(self, host: str) -> dict[str, Any]:
        """Mark ``host`` draining (capacity 0) and move its clusters away one at a time."""
        rec = self.rec
        rec.draining.add(host)
        rec.drain_blocked.discard(host)
        rec.drain_failed.discard(host)
        rec.drain_why.pop(host, None)
        await rec.store.hset(rec.store.keys.host(host), {"state": HostRecordState.DRAINING})
        total = len(rec.held_by(host))
        await self._event(Severity.INFO, "drain", f"draining host {host}: {total} cluster(s) to move",
                          host=host)
        finished = await self._wait(lambda: not rec.held_by(host) or host in rec.drain_blocked)
        left = len(rec.held_by(host))
        if left == 0:
            return {"ok": True, "done": True, "remaining": 0,
                    "message": f"host {host} drained: {total} cluster(s) moved"}
        if host in rec.drain_blocked:
            why = rec.drain_why.get(host, "no other host has room")
            return {"ok": False, "done": False, "remaining": left,
                    "message": f"cannot finish draining {host}: {why}; {left} cluster(s) stay"}
        assert not finished
        return {"ok": True, "done": False, "remaining": left,
                "message": f"draining host {host}: {total - left} of {total} cluster(s) moved so far; continuing"}

    async def undrain(self, host: str) -> dict[str, Any]:
        """Let ``host`` receive clusters again (with ``rebalance: on-join`` clusters move back to it)."""
        rec = self.rec
        was = host in rec.draining or rec.hosts[host].state == HostRecordState.DRAINING
        rec.draining.discard(host)
        rec.drain_blocked.discard(host)
        rec.rebalance_blocked = False
        if rec.hosts[host].state == HostRecordState.DRAINING:
            await rec.store.hset(rec.store.keys.host(host), {"state": HostRecordState.UP})
        self._wake()
        await self._event(Severity.INFO, "undrain", f"host {host} accepts clusters again", host=host)
        return {"ok": True, "message": f"host {host} undrained" if was else f"host {host} was not draining"}

    async def rebalance(self) -> dict[str, Any]:
        """Move clusters one at a time until the load is balanced."""
        rec = self.rec
        rec.rebalance_requested = True
        rec.rebalance_blocked = False
        await self._event(Severity.INFO, "rebalance", "rebalance requested")
        done = await self._wait(lambda: not rec.rebalance_requested and not rec.moves.pending and not rec.handovers)
        if done and rec.rebalance_blocked:
            return {"ok": False, "done": False, "message": "rebalance stopped: a handover was refused or rolled back "
                                                           "(see the events)"}
        if done:
            return {"ok": True, "done": True, "message": "clusters are balanced"}
        moving = len(rec.moves.pending) + len(rec.handovers)
        return {"ok": True, "done": False, "message": f"rebalancing: {moving} move(s) in progress; continuing"}

    @staticmethod
    def _reply(outcome: Any, cluster: int) -> dict[str, Any]:
        if outcome is None or not outcome.final:
            state = outcome.message if outcome is not None else f"cluster {cluster}: queued"
            return {"ok": False, "done": False, "cluster": cluster,
                    "message": f"{state}; no switch yet within the wait (the handover goes on)"}
        reply: dict[str, Any] = {"ok": outcome.state in ("switched", "done"), "done": True, "cluster": cluster,
                                 "state": outcome.state, "message": outcome.message, "epoch": outcome.epoch,
                                 "seconds": round(outcome.seconds, 3)}
        if outcome.state == "fallback":
            reply.update(fallback="host", host=outcome.host)
        return reply

    async def restart(self, cluster: int, wait: float) -> dict[str, Any]:
        """Hand ``cluster`` over to a fresh process on its own host; reply once switched (or rolled back)."""
        rec = self.rec
        serial = rec.request_restart(cluster, HandoverReason.RESTART)
        await self._wait(lambda: rec.outcomes[serial].final, wait)
        return self._reply(rec.outcomes.pop(serial, None), cluster)

    async def rolling_restart(self, host: str, wait: float) -> dict[str, Any]:
        """Hand every cluster of ``host`` over in place, one at a time; reply when all switched or one failed."""
        rec = self.rec
        record = rec.hosts.get(host)
        if record is None or not record.handovers:
            return {"ok": False, "fallback": "host", "host": host,
                    "message": f"host {host} does not take part in handovers; restart it through the host"}
        refused = rec.start_rolling(host)
        if refused is not None:
            return {"ok": False, "message": f"rolling_restart: {refused}"}
        op = rec.operation
        assert op is not None
        await self._event(Severity.INFO, "rolling_restart",
                          f"rolling restart of host {host}: {op['total']} cluster(s)", host=host)
        finished = await self._wait(lambda: op["state"] != "running", wait)
        rec.finish_operation()
        total, done, steps, skipped = op["total"], op["done"], op["steps"], op["skipped"]
        if op["state"] == "done" and skipped:
            return {"ok": False, "done": True, "total": total, "restarted": done, "steps": steps, "skipped": skipped,
                    "message": f"rolling restart of host {host}: {done} of {total} cluster(s) handed over; skipped "
                               f"{skipped} (not running here: restart each with `letsfrag restart --cluster N`)"}
        if op["state"] == "done":
            return {"ok": True, "done": True, "total": total, "steps": steps,
                    "message": f"rolling restart of host {host}: {total} of {total} cluster(s) handed over"}
        if op["state"] == "failed":
            return {"ok": False, "done": False, "total": total, "restarted": done, "steps": steps,
                    "message": f"rolling restart of host {host} stopped after {done} of {total}: {op['message']}"}
        assert not finished
        return {"ok": False, "done": False, "total": total, "restarted": done, "steps": steps,
                "message": f"rolling restart of host {host}: {done} of {total} so far, no end within the wait "
                           "(it goes on)"}
