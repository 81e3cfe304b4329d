"""What the simulated gateway does with each command a client sends (IDENTIFY, RESUME, op 8, ...)."""

from __future__ import annotations

import logging
from typing import Any

from letsfrag.contract.exitcodes import CloseCode
from letsfrag.contract.opcodes import GatewayOp
from letsfrag.sim import payloads
from letsfrag.sim.core import SimCore
from letsfrag.sim.protocol import PRIVILEGED_INTENTS, VALID_INTENTS, Intent
from letsfrag.sim.referee import IdentifyVerdict
from letsfrag.sim.sessions import Link

log = logging.getLogger(__name__)
_CHUNK_SIZE = 1000


def token_ok(core: SimCore, token: Any) -> bool:
    """Without a configured token any non-empty one passes; with one, only that one."""
    if not isinstance(token, str):
        return False
    token = token.removeprefix("Bot ").strip()
    if core.options.token is None:
        return bool(token)
    return token == core.options.token


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def handle_command(core: SimCore, link: Link, op: Any, data: Any) -> None:
    """Act on one decoded client frame."""
    if op == GatewayOp.HEARTBEAT:
        return  # the connection records the time and schedules the ACK itself
    if op == GatewayOp.IDENTIFY:
        identify(core, link, data)
    elif op == GatewayOp.RESUME:
        resume(core, link, data)
    elif link.session is None and op in (GatewayOp.PRESENCE_UPDATE, GatewayOp.VOICE_STATE_UPDATE,
                                         GatewayOp.REQUEST_GUILD_MEMBERS):
        core.close_link(link, CloseCode.NOT_AUTHENTICATED, "Not authenticated.")
    elif op == GatewayOp.REQUEST_GUILD_MEMBERS:
        request_members(core, link, data)
    elif op in (GatewayOp.PRESENCE_UPDATE, GatewayOp.VOICE_STATE_UPDATE):
        return  # accepted and ignored
    else:
        core.close_link(link, CloseCode.UNKNOWN_OPCODE, f"Unknown opcode {op!r}.")


def _authenticated(core: SimCore, link: Link, data: Any, op: str) -> bool:
    """An IDENTIFY/RESUME payload must be an object carrying an accepted token; close the link otherwise."""
    if not isinstance(data, dict):
        core.close_link(link, CloseCode.DECODE_ERROR, f"{op} payload must be an object.")
        return False
    if not token_ok(core, data.get("token")):
        core.close_link(link, CloseCode.AUTHENTICATION_FAILED, "Authentication failed.")
        return False
    return True


def identify(core: SimCore, link: Link, data: Any) -> None:
    """IDENTIFY: validate, apply the identify window and session budget, then READY + GUILD_CREATEs."""
    options = core.options
    if link.session is not None:
        core.close_link(link, CloseCode.ALREADY_AUTHENTICATED, "Already authenticated.")
        return
    if not _authenticated(core, link, data, "IDENTIFY"):
        return
    shard = data.get("shard")
    if shard is None:
        if core.recommended_shards() != 1 or core.oversized(0, 1):
            core.close_link(link, CloseCode.SHARDING_REQUIRED,
                            f"Sharding required: use {core.recommended_shards()} shards.")
            return
        shard = [0, 1]
    if (
        not isinstance(shard, list)
        or len(shard) != 2
        or not all(_is_int(x) for x in shard)
        or not 0 <= shard[0] < shard[1]
    ):
        core.close_link(link, CloseCode.INVALID_SHARD, f"Invalid shard {shard!r}.")
        return
    if options.max_concurrency > 1 and shard[1] % options.max_concurrency:
        core.close_link(link, CloseCode.INVALID_SHARD,
                        f"Invalid shard {shard!r}: the shard count must be a multiple of max_concurrency "
                        f"{options.max_concurrency}.")
        return
    if core.oversized(shard[0], shard[1]):
        core.close_link(link, CloseCode.SHARDING_REQUIRED, core.sharding_required(shard[0], shard[1]))
        return
    intents = data.get("intents")
    if not isinstance(intents, int) or isinstance(intents, bool) or intents < 0 or intents & ~VALID_INTENTS:
        core.close_link(link, CloseCode.INVALID_INTENTS, f"Invalid intent(s) {intents!r}.")
        return
    if not options.privileged_intents_allowed and intents & PRIVILEGED_INTENTS:
        core.close_link(link, CloseCode.DISALLOWED_INTENTS, "Disallowed intent(s).")
        return
    shard_id, shard_count = shard
    result = core.referee.identify(shard_id, core.clock())
    if result.verdict is IdentifyVerdict.EXHAUSTED:
        core.close_link(link, CloseCode.RATE_LIMITED, "session start limit exhausted")
        return
    if result.verdict is IdentifyVerdict.RATE_LIMITED:
        log.info("shard %s identified %.3fs too early for bucket %s", shard_id, result.early_by, result.bucket)
        if options.on_violation == "close":
            core.close_link(link, CloseCode.RATE_LIMITED, "You are being rate limited.")
        else:
            core.send_invalid_session(link, resumable=False)
        return
    if result.verdict is IdentifyVerdict.ACCEPTED_VIOLATION:
        log.info("shard %s identified %.3fs too early for bucket %s (counted)", shard_id, result.early_by,
                 result.bucket)
    core.start_session(link, shard_id, shard_count, intents)


def resume(core: SimCore, link: Link, data: Any) -> None:
    """RESUME: replay what the session missed, then RESUMED; INVALID_SESSION(false) when impossible."""
    if link.session is not None and link.session.link is link:
        core.close_link(link, CloseCode.ALREADY_AUTHENTICATED, "Already authenticated.")
        return
    if not _authenticated(core, link, data, "RESUME"):
        return
    session_id = data.get("session_id")
    core.resume_session(link, session_id if isinstance(session_id, str) else None, data.get("seq"))


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def request_members(core: SimCore, link: Link, data: Any) -> None:
    """REQUEST_GUILD_MEMBERS (op 8): answer with GUILD_MEMBERS_CHUNK(s) on the same session."""
    session = link.session
    if session is None or not isinstance(data, dict):
        return
    core.referee.count("member_chunk_requests")
    raw_ids = data.get("guild_id")
    guild_ids = [_as_int(g) for g in (raw_ids if isinstance(raw_ids, list) else [raw_ids])]
    raw_users = data.get("user_ids")
    user_ids: list[int] | None = None
    if raw_users is not None:
        parsed = [_as_int(u) for u in (raw_users if isinstance(raw_users, list) else [raw_users])]
        user_ids = [u for u in parsed if u is not None]
    query = data.get("query") if isinstance(data.get("query"), str) else None
    raw_limit = data.get("limit")
    limit = raw_limit if isinstance(raw_limit, int) else 0
    nonce = data.get("nonce") if isinstance(data.get("nonce"), str) else None
    if user_ids is None and not session.intents & Intent.GUILD_MEMBERS and not query:
        core.close_link(link, CloseCode.DISALLOWED_INTENTS, "Requesting all members needs GUILD_MEMBERS.")
        return
    for guild_id in guild_ids:
        guild = core.world.guilds.get(guild_id) if guild_id is not None else None
        if guild is None or payloads.shard_for(guild.id, session.shard_count) != session.shard_id:
            continue
        members, not_found = core.world.query_members(guild, query=query, user_ids=user_ids, limit=limit)
        chunks = [members[i : i + _CHUNK_SIZE] for i in range(0, len(members), _CHUNK_SIZE)] or [[]]
        for index, chunk in enumerate(chunks):
            body = payloads.members_chunk(
                guild_id=guild.id,
                members=chunk,
                chunk_index=index,
                chunk_count=len(chunks),
                nonce=nonce,
                not_found=not_found if index == 0 else [],
            )
            session.dispatch("GUILD_MEMBERS_CHUNK", payloads.dumps(body))
