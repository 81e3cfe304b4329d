"""The REST half of the simulated Discord (``/api/v10``), with Discord's exact JSON content type."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from letsfrag.sim import payloads
from letsfrag.sim.client_ops import token_ok
from letsfrag.sim.core import SimCore
from letsfrag.sim.world import APPLICATION_ID, BOT_USER_ID, OWNER_USER_ID

API = r"/api/v{version:\d+}"
#: where the application keeps its SimCore
CORE_KEY = web.AppKey("letsfrag_sim_core", SimCore)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    """JSON with ``Content-Type: application/json`` exactly (a charset suffix breaks discord.py's login)."""
    return web.Response(
        body=payloads.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def discord_error(status: int, message: str, code: int = 0) -> web.Response:
    """An error body shaped like Discord's."""
    return json_response({"message": message, "code": code}, status=status)


def _core(request: web.Request) -> SimCore:
    return request.app[CORE_KEY]


def _int_param(request: web.Request, name: str) -> int | None:
    try:
        return int(request.match_info[name])
    except (KeyError, ValueError):
        return None


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count REST calls, check the bot token, and answer unknown routes with a counted JSON 404."""
    core = _core(request)
    is_api = request.path.startswith("/api/")
    if is_api:
        core.referee.count("rest_requests")
        # the gateway URL, and interaction callbacks (authenticated by the interaction token in their path)
        public = (request.method == "GET" and request.path.rstrip("/").endswith("/gateway")) or (
            request.method == "POST" and "/interactions/" in request.path)
        if not public:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bot ") or not token_ok(core, auth):
                return discord_error(401, "401: Unauthorized")
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        core.referee.count("unknown_routes")
        return discord_error(404, "404: Not Found")


async def users_me(request: web.Request) -> web.Response:
    return json_response(_core(request).world.bot_user)


async def get_user(request: web.Request) -> web.Response:
    world = _core(request).world
    user_id = _int_param(request, "user_id")
    if user_id == BOT_USER_ID:
        return json_response(world.bot_user)
    if user_id == OWNER_USER_ID:
        return json_response(world.owner_user)
    if user_id is not None and any(m.id == user_id for m in world.members):
        return json_response(world.member_user(user_id))
    return discord_error(404, "Unknown User", 10013)


async def application_me(request: web.Request) -> web.Response:
    world = _core(request).world
    return json_response(payloads.application(APPLICATION_ID, world.bot_user, world.owner_user))


async def gateway(request: web.Request) -> web.Response:
    return json_response({"url": _core(request).gateway_url})


async def gateway_bot(request: web.Request) -> web.Response:
    core = _core(request)
    return json_response(
        {"url": core.gateway_url, "shards": core.recommended_shards(),
         "session_start_limit": core.session_start_limit()}
    )


async def _message_body(request: web.Request) -> dict[str, Any] | None:
    try:
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            raw = form.get("payload_json")
            body = json.loads(raw) if isinstance(raw, str) else {}
        else:
            body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def post_message(request: web.Request) -> web.Response:
    core = _core(request)
    channel_id = _int_param(request, "channel_id")
    body = await _message_body(request)
    if body is None:
        return discord_error(400, "Invalid Form Body", 50035)
    message = core.post_message(channel_id, body) if channel_id is not None else None
    if message is None:
        return discord_error(404, "Unknown Channel", 10003)
    return json_response(message)


async def interaction_callback(request: web.Request) -> web.Response:
    """An interaction's response: accepted once (204); a second one is Discord's 40060."""
    interaction_id = _int_param(request, "interaction_id")
    if interaction_id is None:
        return discord_error(404, "Unknown interaction", 10062)
    if not _core(request).interaction_callback(interaction_id):
        return discord_error(400, "Interaction has already been acknowledged.", 40060)
    return web.Response(status=204)


async def get_channel(request: web.Request) -> web.Response:
    world = _core(request).world
    channel_id = _int_param(request, "channel_id")
    guild_id = world.by_channel.get(channel_id) if channel_id is not None else None
    if channel_id is None or guild_id is None:
        return discord_error(404, "Unknown Channel", 10003)
    return json_response(payloads.text_channel(channel_id, guild_id, "general"))


async def get_guild(request: web.Request) -> web.Response:
    world = _core(request).world
    guild_id = _int_param(request, "guild_id")
    if guild_id is None or guild_id not in world.guilds:
        return discord_error(404, "Unknown Guild", 10004)
    return json_response(json.loads(world.guild_json(guild_id, all_members=False)))


async def list_commands(request: web.Request) -> web.Response:
    return json_response([])


async def put_commands(request: web.Request) -> web.Response:
    """Bulk overwrite of application commands (``tree.sync()``): echo them back with ids."""
    core = _core(request)
    try:
        commands = await request.json()
    except ValueError:
        return discord_error(400, "Invalid Form Body", 50035)
    if not isinstance(commands, list):
        return discord_error(400, "Invalid Form Body", 50035)
    answer = []
    for command in commands:
        if isinstance(command, dict):
            answer.append({**command, "id": str(core.new_message_id()), "application_id": str(APPLICATION_ID),
                           "version": "1", "default_member_permissions": None, "type": command.get("type", 1)})
    return json_response(answer)


def add_routes(app: web.Application) -> None:
    """Register the REST routes (every ``/api/vN`` prefix) on ``app``."""
    r = app.router
    r.add_get(API + "/users/@me", users_me)
    r.add_get(API + "/users/{user_id}", get_user)
    r.add_get(API + "/oauth2/applications/@me", application_me)
    r.add_get(API + "/applications/@me", application_me)
    r.add_get(API + "/gateway", gateway)
    r.add_get(API + "/gateway/bot", gateway_bot)
    r.add_post(API + "/channels/{channel_id}/messages", post_message)
    r.add_post(API + "/interactions/{interaction_id}/{token}/callback", interaction_callback)
    r.add_get(API + "/channels/{channel_id}", get_channel)
    r.add_get(API + "/guilds/{guild_id}", get_guild)
    r.add_get(API + "/applications/{app_id}/commands", list_commands)
    r.add_put(API + "/applications/{app_id}/commands", put_commands)
    r.add_get(API + "/applications/{app_id}/guilds/{guild_id}/commands", list_commands)
    r.add_put(API + "/applications/{app_id}/guilds/{guild_id}/commands", put_commands)
