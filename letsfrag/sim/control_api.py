"""``/_sim/*``: the referee's counters and the knobs tests and the demo turn."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from letsfrag.sim.background import Background
from letsfrag.sim.core import SimCore
from letsfrag.sim.payloads import shard_for
from letsfrag.sim.rest import CORE_KEY, json_response
from letsfrag.units import parse_duration

#: where the application keeps its Background
BACKGROUND_KEY = web.AppKey("letsfrag_sim_background", Background)


class BadRequest(ValueError):
    """A control request with a missing or malformed parameter."""


def _error(text: str, status: int = 400) -> web.Response:
    return json_response({"error": text}, status=status)


def _core(request: web.Request) -> SimCore:
    return request.app[CORE_KEY]


def _background(request: web.Request) -> Background:
    return request.app[BACKGROUND_KEY]


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _param(request: web.Request, body: dict[str, Any], name: str, default: Any = None) -> Any:
    if name in request.query:
        return request.query[name]
    return body.get(name, default)


def _number(value: Any, name: str, *, duration: bool = False) -> float:
    try:
        number = parse_duration(value) if duration else float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a {'duration' if duration else 'number'}, found {value!r}") from None
    if number < 0:
        raise BadRequest(f"{name} cannot be negative, found {value!r}")
    return number


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer, found {value!r}") from None


def _num_shards(request: web.Request, body: dict[str, Any]) -> int | None:
    """The optional ``num_shards`` parameter: which shard count a shard id means (None = every count in use)."""
    value = _param(request, body, "num_shards")
    if value is None:
        return None
    count = _int(value, "num_shards")
    if count < 1:
        raise BadRequest(f"num_shards must be at least 1, found {count}")
    return count


async def stats(request: web.Request) -> web.Response:
    return json_response(_core(request).stats())


async def reset(request: web.Request) -> web.Response:
    _core(request).reset()
    return json_response({"reset": True})


async def shard_action(request: web.Request) -> web.Response:
    core = _core(request)
    action = request.match_info["action"]
    try:
        shard_id = _int(request.match_info["shard_id"], "shard id")
        body = await _body(request)
        num_shards = _num_shards(request, body)
        if action == "reconnect":
            count = core.reconnect_shard(shard_id, num_shards)
        elif action == "invalidate":
            resumable = str(_param(request, body, "resumable", "false")).lower() in ("1", "true", "yes")
            count = core.invalidate_shard(shard_id, resumable=resumable, shard_count=num_shards)
        elif action == "drop":
            count = core.drop_shard(shard_id, num_shards)
        else:
            return _error(f"unknown shard action {action!r} (expected reconnect, invalidate or drop)", 404)
    except ValueError as exc:
        return _error(str(exc))
    return json_response({"shard_id": shard_id, "action": action, "sessions": count})


async def dispatch(request: web.Request) -> web.Response:
    core = _core(request)
    try:
        body = await _body(request)
        event = body.get("event")
        if not isinstance(event, str) or not event:
            raise BadRequest("dispatch needs 'event', an event name such as MESSAGE_CREATE")
        guild_id = body.get("guild_id")
        shard_id = body.get("shard_id")
        routed = core.dispatch(
            event,
            body.get("data", {}),
            guild_id=None if guild_id is None else _int(guild_id, "guild_id"),
            shard_id=None if shard_id is None else _int(shard_id, "shard_id"),
            shard_count=_num_shards(request, body),
        )
    except ValueError as exc:
        return _error(str(exc))
    return json_response({"live": routed.live, "buffered": routed.buffered})


async def list_guilds(request: web.Request) -> web.Response:
    world = _core(request).world
    try:
        num_shards = _num_shards(request, {}) or world.shard_count
    except ValueError as exc:
        return _error(str(exc))
    return json_response(
        [{"id": str(g.id), "shard_id": shard_for(g.id, num_shards), "channel_id": str(g.text_channel_id)}
         for g in world.guilds.values()]
    )


async def add_guilds(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        count = _int(_param(request, body, "count", 1), "count")
        if count < 0:
            raise BadRequest(f"count cannot be negative, found {count}")
    except ValueError as exc:
        return _error(str(exc))
    ids = _core(request).add_guilds(count)
    return json_response({"added": [str(i) for i in ids], "guilds": len(_core(request).world.guilds)})


async def chaos(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        seconds = _number(_param(request, body, "seconds", 10), "seconds", duration=True)
        rate = _number(_param(request, body, "rate", 1), "rate")
        _background(request).start_chaos(seconds, rate)
    except ValueError as exc:
        return _error(str(exc))
    return json_response({"chaos": True, "seconds": seconds, "rate": rate})


async def traffic(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        rate = _number(_param(request, body, "rate", 1), "rate")
        raw_seconds = _param(request, body, "seconds")
        seconds = None if raw_seconds in (None, "", "inf") else _number(raw_seconds, "seconds", duration=True)
        joins = _number(_param(request, body, "joins", 0), "joins")
        _background(request).start_traffic(rate, seconds, joins)
    except ValueError as exc:
        return _error(str(exc))
    return json_response({"traffic": True, "rate": rate, "seconds": seconds, "joins": joins})


async def traffic_stop(request: web.Request) -> web.Response:
    return json_response({"stopped": _background(request).stop_traffic()})


async def ping(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        guild_id = _param(request, body, "guild_id")
        n = _core(request).send_ping(None if guild_id is None else _int(guild_id, "guild_id"))
    except ValueError as exc:
        return _error(str(exc))
    return json_response({"n": n})


def add_routes(app: web.Application) -> None:
    """Register the control routes on ``app``."""
    r = app.router
    r.add_get("/_sim/stats", stats)
    r.add_post("/_sim/reset", reset)
    r.add_post("/_sim/shards/{shard_id}/{action}", shard_action)
    r.add_post("/_sim/dispatch", dispatch)
    r.add_get("/_sim/guilds", list_guilds)
    r.add_post("/_sim/guilds", add_guilds)
    r.add_post("/_sim/chaos", chaos)
    r.add_post("/_sim/traffic", traffic)
    r.add_post("/_sim/traffic/stop", traffic_stop)
    r.add_post("/_sim/ping", ping)

