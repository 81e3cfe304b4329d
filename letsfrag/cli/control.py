"""Operator commands (docs/redis.md, "Commands"): restart, rolling restart, drain, undrain, rebalance, reshard.

A restart of one cluster and a rolling restart of a host go to the leader broker, which hands each cluster over
to a fresh process beside the running one (:mod:`letsfrag.contract.handover`) and answers once it switched (or rolled
back). When no broker listens, or the broker answers ``"fallback": "host"`` (an older supervisor, or the
cluster is not running, e.g. FAILED), the command goes to the host as before: stop, then start (lossy).

Every method sends one ``command`` request over the :class:`~letsfrag.bus.Bus` and returns the reply value,
always a dict with at least ``ok`` (bool) and ``message`` (str): a timeout, a remote error or an unknown target
becomes ``{"ok": False, "message": ...}`` instead of an exception, so the CLI and the dashboard show it as is.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from ..bus import Bus
from ..contract.actions import BrokerAction, HostAction
from ..contract.envelope import MessageType
from ..contract.records import Grant, clock_skew_text, lenient_float
from ..errors import BusError, RecordError, RemoteError, RequestTimeout

__all__ = ["Control"]


class Control:
    """Send operator commands through ``bus``; ``timeout`` is the default wait for the outcome (seconds)."""

    def __init__(self, bus: Bus, *, timeout: float = 60.0) -> None:
        self.bus = bus
        self.timeout = timeout

    async def host_of(self, cluster_id: int) -> str | None:
        """The host the assignment names for ``cluster_id`` (None: unassigned). Raises ``BusError`` offline."""
        try:
            raw = await self.bus.redis.hget(self.bus.keys.assignment, str(cluster_id))
        except (RedisError, OSError) as exc:
            raise BusError(f"cannot read the assignment from Redis at {self.bus.address}: {exc}") from exc
        if not raw:
            return None
        try:
            return Grant.from_json(raw, key=self.bus.keys.assignment, field=str(cluster_id)).host
        except RecordError:
            return None

    @staticmethod
    def _broker_wait(timeout: float) -> float:
        """How long the broker may wait before it replies: inside the caller's timeout, with a margin."""
        return max(0.5, min(timeout - 1.0, timeout * 0.9))

    def _wants_host(self, reply: dict[str, Any]) -> bool:
        return reply.get("fallback") == "host" or "no broker is running" in str(reply.get("message", ""))

    async def restart_cluster(self, cluster_id: int, *, timeout: float | None = None) -> dict[str, Any]:
        """Restart cluster ``cluster_id``: by a handover through the broker (nothing lost), else through the host
        that runs it (stop and start; also clears FAILED)."""
        wait = self.timeout if timeout is None else timeout
        payload = {"action": BrokerAction.RESTART, "cluster": cluster_id, "wait": self._broker_wait(wait)}
        reply = await self._send(self.bus.keys.broker_inbox, "broker", payload, wait)
        if not self._wants_host(reply):
            return reply
        return await self.restart_cluster_on_host(cluster_id, timeout=timeout)

    async def restart_cluster_on_host(self, cluster_id: int, *, timeout: float | None = None) -> dict[str, Any]:
        """Restart cluster ``cluster_id`` through the host that runs it: stop, then start (also clears FAILED)."""
        try:
            host = await self.host_of(cluster_id)
        except BusError as exc:
            return {"ok": False, "message": str(exc)}
        if host is None:
            return {"ok": False, "message": f"cluster {cluster_id} is not assigned to any host; nothing to restart"}
        payload = {"action": HostAction.RESTART, "cluster": cluster_id}
        return await self._send(self.bus.keys.host_inbox(host), f"host:{host}", payload, timeout)

    async def restart_host(self, host: str, *, rolling: bool = False, timeout: float | None = None) -> dict[str, Any]:
        """Restart every cluster of ``host``: all at once through the host (stop and start, lossy), or
        ``rolling``: one handover at a time through the broker, each after the previous switch (through the host,
        each waiting for READY, when the broker cannot)."""
        if rolling:
            wait = self.timeout if timeout is None else timeout
            request = {"action": BrokerAction.ROLLING_RESTART, "host": host, "wait": self._broker_wait(wait)}
            reply = await self._send(self.bus.keys.broker_inbox, "broker", request, wait)
            if not self._wants_host(reply):
                return reply
        payload = {"action": HostAction.ROLLING_RESTART if rolling else HostAction.RESTART_ALL}
        return await self._send(self.bus.keys.host_inbox(host), f"host:{host}", payload, timeout)

    async def drain(self, host: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Ask the broker to mark ``host`` draining (capacity 0) and move its clusters away."""
        payload = {"action": BrokerAction.DRAIN, "host": host}
        return await self._send(self.bus.keys.broker_inbox, "broker", payload, timeout)

    async def undrain(self, host: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Ask the broker to give ``host`` its capacity back."""
        payload = {"action": BrokerAction.UNDRAIN, "host": host}
        return await self._send(self.bus.keys.broker_inbox, "broker", payload, timeout)

    async def rebalance(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Ask the broker to move clusters until hosts are balanced by capacity."""
        return await self._send(self.bus.keys.broker_inbox, "broker", {"action": BrokerAction.REBALANCE}, timeout)

    async def reshard(self, *, shards: int | None = None, recommended: bool = False, execute: bool = False,
                      deadline: float | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Ask the leader broker for the plan of a reshard to ``shards`` (or to the recommended count): the reply
        has ``lines`` (the plan as text) or ``refused`` and the sentence why. With ``execute`` the broker runs it
        (its new generation must be ready within ``deadline`` seconds, default the broker's handover timeout)
        and replies once it finished, within ``timeout``."""
        payload: dict[str, Any] = {"action": BrokerAction.RESHARD, "recommended": True} if recommended else \
            {"action": BrokerAction.RESHARD, "shards": shards}
        if execute:
            wait = self.timeout if timeout is None else timeout
            payload.update(execute=True, wait=self._broker_wait(wait))
            if deadline is not None:
                payload["timeout"] = deadline
        return await self._send(self.bus.keys.broker_inbox, "broker", payload, timeout)

    async def _clock_hint(self, target: str) -> str:
        """`` (host h1: clock is 120.0s behind Redis TIME ...)`` when the silent host's clock is skewed."""
        if not target.startswith("host:"):
            return ""
        host = target[len("host:"):]
        try:
            raw = await self.bus.redis.hget(self.bus.keys.host(host), "clock_offset")  # type: ignore[misc]
        except (RedisError, OSError):
            return ""
        text = clock_skew_text(host, lenient_float(raw))
        return f" ({text})" if text else ""

    async def _send(self, channel: str, target: str, payload: dict[str, Any],
                    timeout: float | None) -> dict[str, Any]:
        wait = self.timeout if timeout is None else timeout
        try:
            value = await self.bus.request(channel, MessageType.COMMAND, payload, target=target, timeout=wait)
        except RequestTimeout as exc:
            text = str(exc)
            if "nobody is listening" in text:
                who = "no broker is running" if target == "broker" else f"{target} is not running (no subscriber)"
                return {"ok": False, "message": f"{payload['action']}: {who}"}
            hint = await self._clock_hint(target)
            return {"ok": False, "message": f"{payload['action']}: {text}{hint}"}
        except RemoteError as exc:
            return {"ok": False, "message": f"{payload['action']} failed on {target}: {exc.message or exc}"}
        except BusError as exc:
            return {"ok": False, "message": f"{payload['action']}: {exc}"}
        if not isinstance(value, dict):
            return {"ok": bool(value), "message": str(value)}
        result = dict(value)
        result["ok"] = bool(result.get("ok", False))
        result["message"] = str(result.get("message", ""))
        return result
