"""Operator commands (docs/redis.md, "Commands"): restart, rolling restart, drain, undrain, rebalance.

Every method sends one ``command`` request over the :class:`~letsfrag.bus.Bus` and returns the reply value,
always a dict with at least ``ok`` (bool) and ``message`` (str): a timeout, a remote error or an unknown target
becomes ``{"ok": False, "message": ...}`` instead of an exception, so the CLI and the dashboard show it as is.
"""

from __future__ import annotations

import json
from typing import Any

from redis.exceptions import RedisError

from .bus import Bus
from .errors import BusError, RemoteError, RequestTimeout
from .protocol import MessageType
from .records import clock_skew_text, lenient_float

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
        try:
            claim = json.loads(raw) if raw else None
        except ValueError:
            return None
        host = claim.get("host") if isinstance(claim, dict) else None
        return host if isinstance(host, str) and host else None

    async def restart_cluster(self, cluster_id: int, *, timeout: float | None = None) -> dict[str, Any]:
        """Restart cluster ``cluster_id`` on the host that runs it (also clears FAILED)."""
        try:
            host = await self.host_of(cluster_id)
        except BusError as exc:
            return {"ok": False, "message": str(exc)}
        if host is None:
            return {"ok": False, "message": f"cluster {cluster_id} is not assigned to any host; nothing to restart"}
        payload = {"action": "restart", "cluster": cluster_id}
        return await self._send(self.bus.keys.host_inbox(host), f"host:{host}", payload, timeout)

    async def restart_host(self, host: str, *, rolling: bool = False, timeout: float | None = None) -> dict[str, Any]:
        """Restart every cluster of ``host``: all at once, or ``rolling`` (one at a time, each waits for READY)."""
        payload = {"action": "rolling_restart" if rolling else "restart_all"}
        return await self._send(self.bus.keys.host_inbox(host), f"host:{host}", payload, timeout)

    async def drain(self, host: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Ask the broker to mark ``host`` draining (capacity 0) and move its clusters away."""
        return await self._send(self.bus.keys.broker_inbox, "broker", {"action": "drain", "host": host}, timeout)

    async def undrain(self, host: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Ask the broker to give ``host`` its capacity back."""
        return await self._send(self.bus.keys.broker_inbox, "broker", {"action": "undrain", "host": host}, timeout)

    async def rebalance(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Ask the broker to move clusters until hosts are balanced by capacity."""
        return await self._send(self.bus.keys.broker_inbox, "broker", {"action": "rebalance"}, timeout)

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
