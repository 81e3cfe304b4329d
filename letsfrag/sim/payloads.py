"""Pure builders of Discord JSON objects, complete enough for discord.py 2.7's parsers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

DISCORD_EPOCH_MS = 1_420_070_400_000
#: snowflake timestamps (ms since the Discord epoch) where generated guild and object ids start
GUILD_BASE_TS = 300_000_000_000
OBJECT_BASE_TS = 310_000_000_000
JOINED_AT = "2024-06-01T12:00:00.000000+00:00"

Json = dict[str, Any]


def dumps(value: Any) -> str:
    """Compact JSON, the way Discord sends it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def guild_id_for(index: int, shard_count: int) -> int:
    """The id of the ``index``-th generated guild: it lands on shard ``index % shard_count``."""
    base = GUILD_BASE_TS - GUILD_BASE_TS % shard_count
    return ((base + index) << 22) | (index % 4096)


def shard_for(guild_id: int, shard_count: int) -> int:
    """Discord's routing rule: ``(guild_id >> 22) % shard_count``."""
    return (guild_id >> 22) % shard_count


def object_id(n: int) -> int:
    """The ``n``-th generated channel/role/user id."""
    return (OBJECT_BASE_TS + n) << 22


def time_snowflake(unix_seconds: float, counter: int) -> int:
    """A snowflake for an object created at ``unix_seconds`` (messages)."""
    ms = int(unix_seconds * 1000) - DISCORD_EPOCH_MS
    return (ms << 22) | (counter & 0x3FFFFF)


def iso_timestamp(unix_seconds: float) -> str:
    """ISO 8601 with an explicit UTC offset, as Discord writes timestamps."""
    return dt.datetime.fromtimestamp(unix_seconds, tz=dt.UTC).isoformat()


def user(user_id: int, username: str, *, bot: bool = False) -> Json:
    """A user object."""
    data: Json = {
        "id": str(user_id),
        "username": username,
        "discriminator": "0",
        "global_name": username,
        "avatar": None,
        "public_flags": 0,
        "flags": 0,
    }
    if bot:
        data["bot"] = True
        data["verified"] = True
        data["mfa_enabled"] = False
    return data


def member(user_data: Json, role_ids: list[int]) -> Json:
    """A guild member object with its user."""
    return {
        "user": user_data,
        "roles": [str(r) for r in role_ids],
        "joined_at": JOINED_AT,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "nick": None,
        "pending": False,
        "premium_since": None,
    }


def role(role_id: int, name: str, *, position: int, permissions: int, managed: bool = False) -> Json:
    """A role object (``role_id == guild_id`` is @everyone)."""
    return {
        "id": str(role_id),
        "name": name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "position": position,
        "permissions": str(permissions),
        "managed": managed,
        "mentionable": False,
        "flags": 0,
        "icon": None,
        "unicode_emoji": None,
    }


def text_channel(channel_id: int, guild_id: int, name: str, *, position: int = 0) -> Json:
    """A guild text channel (type 0)."""
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild_id),
        "name": name,
        "position": position,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "flags": 0,
    }


def guild(
    *,
    guild_id: int,
    name: str,
    owner_id: int,
    channel_id: int,
    roles: list[Json],
    members: list[Json],
    member_count: int,
    large: bool,
) -> Json:
    """A full guild object as sent in GUILD_CREATE."""
    return {
        "id": str(guild_id),
        "name": name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(owner_id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "system_channel_id": str(channel_id),
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "features": [],
        "roles": roles,
        "emojis": [],
        "stickers": [],
        "joined_at": JOINED_AT,
        "large": large,
        "unavailable": False,
        "member_count": member_count,
        "members": members,
        "channels": [text_channel(channel_id, guild_id, "general")],
        "threads": [],
        "presences": [],
        "voice_states": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "lazy": True,
    }


def ready(
    *,
    session_id: str,
    bot_user: Json,
    guild_ids: list[int],
    shard: tuple[int, int],
    resume_gateway_url: str,
    application_id: int,
) -> Json:
    """The READY dispatch body: guilds start unavailable and arrive as GUILD_CREATE."""
    return {
        "v": 10,
        "user": bot_user,
        "guilds": [{"id": str(g), "unavailable": True} for g in guild_ids],
        "session_id": session_id,
        "session_type": "normal",
        "resume_gateway_url": resume_gateway_url,
        "shard": list(shard),
        "application": {"id": str(application_id), "flags": 0},
        "private_channels": [],
        "relationships": [],
        "presences": [],
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": ["local"],
        "user_settings": {},
        "_trace": ["letsfrag-sim"],
    }


def application(application_id: int, bot_user: Json, owner: Json) -> Json:
    """The application object of ``/oauth2/applications/@me``."""
    return {
        "id": str(application_id),
        "name": bot_user["username"],
        "icon": None,
        "description": "A bot living in the letsfrag simulator",
        "summary": "",
        "type": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "verify_key": "0" * 64,
        "flags": 0,
        "owner": owner,
        "team": None,
        "bot": bot_user,
        "rpc_origins": [],
        "tags": [],
        "redirect_uris": [],
        "interactions_endpoint_url": None,
        "role_connections_verification_url": None,
        "approximate_guild_count": 0,
    }


def message(
    *,
    message_id: int,
    channel_id: int,
    guild_id: int | None,
    author: Json,
    content: str,
    timestamp: str,
    member_data: Json | None = None,
    message_reference: Json | None = None,
    nonce: str | int | None = None,
) -> Json:
    """A message object (MESSAGE_CREATE body or the answer to a POST)."""
    data: Json = {
        "id": str(message_id),
        "type": 19 if message_reference else 0,
        "channel_id": str(channel_id),
        "author": author,
        "content": content,
        "timestamp": timestamp,
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "components": [],
        "pinned": False,
        "flags": 0,
    }
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
    if member_data is not None:
        data["member"] = member_data
    if message_reference is not None:
        data["message_reference"] = message_reference
    if nonce is not None:
        data["nonce"] = nonce
    return data


def members_chunk(
    *,
    guild_id: int,
    members: list[Json],
    chunk_index: int,
    chunk_count: int,
    nonce: str | None,
    not_found: list[str],
) -> Json:
    """A GUILD_MEMBERS_CHUNK body."""
    data: Json = {
        "guild_id": str(guild_id),
        "members": members,
        "chunk_index": chunk_index,
        "chunk_count": chunk_count,
        "not_found": not_found,
        "presences": [],
    }
    if nonce is not None:
        data["nonce"] = nonce
    return data


def dispatch_frame(seq: int, event: str, data_json: str) -> str:
    """An op 0 frame around an already encoded body (so a fan-out encodes the body once)."""
    return f'{{"op":0,"s":{seq},"t":"{event}","d":{data_json}}}'


def op_frame(op: int, data: Any = None) -> str:
    """A non-dispatch frame."""
    return dumps({"op": op, "d": data, "s": None, "t": None})
