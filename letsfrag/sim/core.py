"""The simulator's state and the actions on it, free of any socket or HTTP code.

The gateway and the REST/control handlers call into :class:`SimCore`; connections appear here only as
:class:`~letsfrag.sim.sessions.Link` objects that queue frames.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

from letsfrag.clock import Clock, SystemClock
from letsfrag.contract.exitcodes import CloseCode
from letsfrag.contract.opcodes import GatewayOp
from letsfrag.sim import payloads
from letsfrag.sim.options import SimulatorOptions
from letsfrag.sim.protocol import Intent
from letsfrag.sim.referee import Referee
from letsfrag.sim.sessions import Link, Session, SessionRegistry
from letsfrag.sim.world import Guild, World, recommended_shards

_GUILD_MESSAGES = 1 << 9
#: seconds Discord remembers a message nonce for ``enforce_nonce`` ("a few minutes")
NONCE_WINDOW = 300.0


@dataclass(frozen=True, slots=True)
class Routed:
    """Where one dispatch went: sessions that got it now, and detached sessions that buffered it."""

    live: int
    buffered: int


class SimCore:
    """Options, world, sessions and referee of one simulator, plus every action on them."""

    def __init__(self, options: SimulatorOptions, *, clock: Clock | None = None) -> None:
        self.options = options
        source = clock if clock is not None else SystemClock()
        #: monotonic seconds (every duration and deadline)
        self.clock = source.monotonic
        #: epoch seconds (message timestamps and snowflakes)
        self.wall = source.time
        self.rng = random.Random(options.seed)
        self.world = World(shard_count=options.shards, members_per_guild=options.members_per_guild)
        self.world.add_guilds(options.guilds)
        self.sessions = SessionRegistry(options.resume_buffer)
        self.referee = Referee(
            max_concurrency=options.max_concurrency,
            identify_window=options.identify_window,
            enforce_window=options.on_violation != "count",
            session_start_total=options.session_start_total,
            reject_when_exhausted=options.reject_when_exhausted,
            answer_timeout=options.answer_timeout,
            now=self.clock(),
            handover_deadline=options.handover_deadline,
            shards=options.shards,
        )
        self.links: set[Link] = set()
        self.gateway_url = "ws://127.0.0.1:0/"
        self.started_at = self.clock()
        self._ids = itertools.count(1)
        self._ping_guilds = itertools.count()
        self._ping_authors = itertools.count()
        self._traffic_index = itertools.count()
        #: (author id, nonce) -> (when, the message created): a second post within NONCE_WINDOW returns it
        self.nonces: dict[tuple[int, str], tuple[float, dict[str, Any]]] = {}
        #: interactions already answered (a callback is accepted once, like Discord's)
        self.acknowledged: set[int] = set()

    # --- ids ------------------------------------------------------------------------------------------
    def new_message_id(self) -> int:
        """A fresh message snowflake."""
        return payloads.time_snowflake(self.wall(), next(self._ids))

    # --- session lifecycle -------------------------------------------------------------------------------
    def attach(self, session: Session, link: Link) -> None:
        """Make ``link`` carry ``session``; the session is live from now on."""
        old = session.link
        if old is not None and old is not link:
            # Discord lets a RESUME take a session over; the old connection is closed.
            self.close_link(old, CloseCode.UNKNOWN_ERROR, "session resumed on another connection")
        session.link = link
        session.resumable_until = None
        link.session = session
        marker = getattr(link, "handover_epoch", None)
        if marker is not None and session.handover_epoch is None:
            session.handover_epoch = marker
        self.referee.session_live(session.shard_id, session.session_id, self.clock(),
                                  drain=bool(getattr(link, "replay_drain", False)),
                                  announced=session.handover_epoch, shard_count=session.shard_count)

    def detach(self, session: Session, *, resumable: bool) -> None:
        """The session is no longer carried; keep it for ``resume_window`` or forget it."""
        now = self.clock()
        if session.link is not None:
            session.link = None
            self.referee.session_dead(session.shard_id, session.session_id, now, shard_count=session.shard_count)
        if resumable and self.options.resume_window > 0:
            session.resumable_until = now + self.options.resume_window
        else:
            self.sessions.forget(session)

    def close_link(self, link: Link, code: int, reason: str) -> None:
        """Close a connection with ``code`` (after what is already queued) and count it."""
        if not link.closing:
            self.referee.closed_with(code)
            link.close(code, reason)

    def link_opened(self, link: Link) -> None:
        """A gateway connection was accepted."""
        self.links.add(link)

    def link_closed(self, link: Link, client_code: int | None) -> None:
        """A gateway connection is gone; ``client_code`` is the code of the client's close frame, if any."""
        self.links.discard(link)
        session = link.session
        if session is not None and session.link is link:
            self.detach(session, resumable=client_code not in (1000, 1001))

    def start_session(self, link: Link, shard_id: int, shard_count: int, intents: int) -> Session:
        """Create a session after an accepted IDENTIFY: READY, then one GUILD_CREATE per guild."""
        guild_ids = self.world.guild_ids_for_shard(shard_id, shard_count)
        session = self.sessions.create(shard_id, shard_count, intents, extra_buffer=len(guild_ids))
        ready = payloads.ready(
            session_id=session.session_id,
            bot_user=self.world.bot_user,
            guild_ids=guild_ids,
            shard=(shard_id, shard_count),
            resume_gateway_url=self.gateway_url,
            application_id=int(self.world.bot_user["id"]),
        )
        link.send(session.next_frame("READY", payloads.dumps(ready), buffered=False))
        self.attach(session, link)
        all_members = bool(intents & Intent.GUILD_PRESENCES)
        for guild_id in guild_ids:
            session.dispatch("GUILD_CREATE", self.world.guild_json(guild_id, all_members=all_members))
        return session

    def resume_session(self, link: Link, session_id: str | None, seq: Any) -> Session | None:
        """Continue a session after RESUME; None (and INVALID_SESSION sent) when that is impossible."""
        session = self.sessions.get(session_id)
        now = self.clock()
        frames = None
        if session is not None and isinstance(seq, int) and not isinstance(seq, bool):
            if session.live or (session.resumable_until or 0.0) > now:
                frames = session.replay_after(seq)
        if session is None or frames is None:
            self.referee.count("resume_failures")
            self.send_invalid_session(link, resumable=False)
            return None
        for frame, tag in frames:
            link.send(frame)
            if tag:
                self.referee.handling.delivered(tag, now)
        link.send(session.next_frame("RESUMED", '{"_trace":["letsfrag-sim"]}', buffered=False))
        self.attach(session, link)
        self.referee.count("resumes")
        return session

    def send_invalid_session(self, link: Link, *, resumable: bool) -> None:
        """Send op 9; a live session of the connection stops being live (and is forgotten unless resumable)."""
        link.send(payloads.op_frame(GatewayOp.INVALID_SESSION, resumable))
        self.referee.count("invalid_sessions")
        session = link.session
        if session is not None and session.link is link:
            self.detach(session, resumable=resumable)
        link.session = None

    def send_reconnect(self, link: Link) -> None:
        """Send op 7; the session waits, resumable, for the client to come back."""
        link.send(payloads.op_frame(GatewayOp.RECONNECT))
        self.referee.count("reconnects")
        session = link.session
        if session is not None and session.link is link:
            self.detach(session, resumable=True)

    # --- shard counts -----------------------------------------------------------------------------------
    def recommended_shards(self) -> int:
        """The ``shards`` of ``/gateway/bot``: from the guild count with ``guilds_per_shard``, else ``shards``."""
        per_shard = self.options.guilds_per_shard
        if per_shard is None:
            return self.options.shards
        return recommended_shards(len(self.world.guilds), per_shard, self.options.max_concurrency)

    def oversized(self, shard_id: int, shard_count: int) -> bool:
        """Whether the shard would hold more guilds than ``max_guilds_per_shard`` (Discord closes it with 4011)."""
        limit = self.options.max_guilds_per_shard
        return limit > 0 and self.world.guild_count(shard_id, shard_count) > limit

    def sharding_required(self, shard_id: int, shard_count: int) -> str:
        """The reason of a 4011 close for an oversized shard."""
        return (f"Sharding required: shard {shard_id} of {shard_count} would hold "
                f"{self.world.guild_count(shard_id, shard_count)} guilds (at most "
                f"{self.options.max_guilds_per_shard}); use {self.recommended_shards()} shards.")

    # --- routing ----------------------------------------------------------------------------------------
    @staticmethod
    def route(sessions: list[Session], event: str, data_json: str, *, tag: int = 0) -> Routed:
        """Dispatch to ``sessions``: live ones get it, detached ones buffer it for RESUME."""
        live = buffered = 0
        for session in sessions:
            if session.dispatch(event, data_json, tag=tag):
                live += 1
            else:
                buffered += 1
        return Routed(live, buffered)

    def dispatch(self, event: str, data: Any, *, guild_id: int | None = None, shard_id: int | None = None,
                 shard_count: int | None = None) -> Routed:
        """Send any dispatch to the sessions of ``guild_id`` (its shard of every shard count in use), or to
        ``shard_id`` (of ``shard_count`` shards, or of every count)."""
        if shard_id is None:
            if guild_id is None:
                raise ValueError("dispatch needs guild_id or shard_id")
            return self.route(self.sessions.for_guild(guild_id), event, payloads.dumps(data))
        self._check_shard(shard_id, shard_count)
        return self.route(self.sessions.for_shard(shard_id, shard_count), event, payloads.dumps(data))

    def add_guilds(self, count: int) -> list[int]:
        """Create ``count`` guilds and send their GUILD_CREATE to the sessions they route to, of every shard
        count in use. A session whose shard now holds more than ``max_guilds_per_shard`` guilds is closed with
        4011 instead (and forgotten: 4011 cannot be resumed)."""
        created = self.world.add_guilds(count)
        for session in self.sessions:
            if self.oversized(session.shard_id, session.shard_count):
                reason = self.sharding_required(session.shard_id, session.shard_count)
                link = session.link
                if link is not None:
                    self.close_link(link, CloseCode.SHARDING_REQUIRED, reason)
                    link.session = None
                self.detach(session, resumable=False)
        for guild in created:
            for session in self.sessions.for_guild(guild.id):
                all_members = bool(session.intents & Intent.GUILD_PRESENCES)
                session.dispatch("GUILD_CREATE", self.world.guild_json(guild.id, all_members=all_members))
        return [g.id for g in created]

    def send_ping(self, guild_id: int | None = None) -> int:
        """Send ``!ping <n>`` from a member in a guild's text channel to its shard; return ``n``."""
        guild = self._traffic_guild(guild_id)
        handling = self.referee.handling
        n = handling.take_n()
        message_id = self.new_message_id()
        if self.world.members:
            author = self.world.members[next(self._ping_authors) % len(self.world.members)]
            author_user = self.world.member_user(author.id)
            member_data = self.world.member_payload(guild, author.id)
        else:
            author_user, member_data = self.world.owner_user, None
        member_data = dict(member_data) if member_data else None
        if member_data:
            member_data.pop("user", None)
        body = payloads.message(
            message_id=message_id,
            channel_id=guild.text_channel_id,
            guild_id=guild.id,
            author=author_user,
            member_data=member_data,
            content=f"!ping {n}",
            timestamp=payloads.iso_timestamp(self.wall()),
        )
        encoded: dict[bool, str] = {}
        delivered = False
        for session in self.sessions.for_guild(guild.id):
            if not session.intents & _GUILD_MESSAGES:
                continue
            with_content = bool(session.intents & Intent.MESSAGE_CONTENT)
            if with_content not in encoded:
                encoded[with_content] = payloads.dumps(body if with_content else {**body, "content": ""})
            delivered |= session.dispatch("MESSAGE_CREATE", encoded[with_content], tag=message_id)
        handling.sent(n, message_id, self.clock(), delivered=delivered)
        return n

    def send_join(self, guild_id: int | None = None) -> int:
        """A new user ``joiner-<n>`` joins a guild: GUILD_MEMBER_ADD to its shard's sessions (those with the
        GUILD_MEMBERS intent); return ``n``. A bot answers it with ``welcome joiner-<n>``."""
        guild = self._traffic_guild(guild_id)
        handling = self.referee.handling
        n = handling.take_n()
        user_id = self.new_message_id()
        body = {**payloads.member(payloads.user(user_id, f"joiner-{n}"), []), "guild_id": str(guild.id),
                "joined_at": payloads.iso_timestamp(self.wall())}
        encoded = payloads.dumps(body)
        delivered = False
        for session in self.sessions.for_guild(guild.id):
            if session.intents & Intent.GUILD_MEMBERS:
                delivered |= session.dispatch("GUILD_MEMBER_ADD", encoded, tag=user_id)
        handling.sent(n, user_id, self.clock(), delivered=delivered, kind="join")
        return n

    def send_event(self, join_ratio: float = 0.0) -> int:
        """The next traffic event: a member join for a ``join_ratio`` share of them (spread evenly), else a ping."""
        index = next(self._traffic_index)
        if join_ratio > 0 and int((index + 1) * join_ratio) > int(index * join_ratio):
            return self.send_join()
        return self.send_ping()

    def _traffic_guild(self, guild_id: int | None) -> Guild:
        if not self.world.guilds:
            raise ValueError("the simulator has no guilds to send traffic to")
        if guild_id is None:
            guild_ids = list(self.world.guilds)
            guild_id = guild_ids[next(self._ping_guilds) % len(guild_ids)]
        guild = self.world.guilds.get(guild_id)
        if guild is None:
            raise ValueError(f"unknown guild {guild_id}")
        return guild

    def post_message(self, channel_id: int, body: dict[str, Any]) -> dict[str, Any] | None:
        """A bot posted a message: record it for the handling referee and answer like Discord (None: 404).

        With ``enforce_nonce: true`` and a nonce this author already used within :data:`NONCE_WINDOW` seconds,
        the message created then is returned and nothing is created or counted (``nonce_deduped``)."""
        guild_id = self.world.by_channel.get(channel_id)
        if guild_id is None:
            return None
        guild = self.world.guilds[guild_id]
        nonce = body.get("nonce")
        enforced: tuple[int, str] | None = None
        if body.get("enforce_nonce") is True and isinstance(nonce, str | int) and not isinstance(nonce, bool):
            now = self.clock()
            enforced = (int(self.world.bot_user["id"]), str(nonce))
            earlier = self.nonces.get(enforced)
            if earlier is not None and now - earlier[0] <= NONCE_WINDOW:
                self.referee.count("nonce_deduped")
                return earlier[1]
            if len(self.nonces) > 10_000:
                self.nonces = {k: v for k, v in self.nonces.items() if now - v[0] <= NONCE_WINDOW}
        reference = body.get("message_reference") if isinstance(body.get("message_reference"), dict) else None
        referenced_id: int | None = None
        if reference is not None:
            try:
                referenced_id = int(reference.get("message_id"))
            except (TypeError, ValueError):
                referenced_id = None
            reference = {
                "type": 0,
                "message_id": str(referenced_id) if referenced_id is not None else None,
                "channel_id": str(channel_id),
                "guild_id": str(guild_id),
            }
        raw_content = body.get("content")
        content = raw_content if isinstance(raw_content, str) else ""
        self.referee.count("messages_posted")
        self.referee.handling.reply(referenced_id, content)
        member_data = dict(self.world.member_payload(guild, int(self.world.bot_user["id"])))
        member_data.pop("user", None)
        message = payloads.message(
            message_id=self.new_message_id(),
            channel_id=channel_id,
            guild_id=guild_id,
            author=self.world.bot_user,
            member_data=member_data,
            content=content,
            timestamp=payloads.iso_timestamp(self.wall()),
            message_reference=reference,
            nonce=nonce if isinstance(nonce, str | int) else None,
        )
        if enforced is not None:
            self.nonces[enforced] = (self.clock(), message)
        return message

    def interaction_callback(self, interaction_id: int) -> bool:
        """The callback (response) of an interaction: True the first time, False after (Discord's 40060)."""
        if interaction_id in self.acknowledged:
            self.referee.count("interaction_already_acknowledged")
            return False
        self.acknowledged.add(interaction_id)
        self.referee.count("interaction_callbacks")
        return True

    # --- control ----------------------------------------------------------------------------------------
    def _check_shard(self, shard_id: int, shard_count: int | None = None) -> None:
        if shard_count is not None and shard_count < 1:
            raise ValueError(f"num_shards must be at least 1, found {shard_count}")
        top = shard_count if shard_count is not None else max([self.options.shards, *self.sessions.shard_counts])
        if not 0 <= shard_id < top:
            raise ValueError(f"shard_id {shard_id} is outside 0..{top - 1}")

    def _live_links(self, shard_id: int, shard_count: int | None) -> list[Link]:
        self._check_shard(shard_id, shard_count)
        return [s.link for s in self.sessions.live_for_shard(shard_id, shard_count) if s.link is not None]

    def reconnect_shard(self, shard_id: int, shard_count: int | None = None) -> int:
        """Send RECONNECT (op 7) to every live session of a shard (of ``shard_count`` shards, or of every count);
        return how many."""
        links = self._live_links(shard_id, shard_count)
        for link in links:
            self.send_reconnect(link)
        return len(links)

    def invalidate_shard(self, shard_id: int, *, resumable: bool = False, shard_count: int | None = None) -> int:
        """Send INVALID_SESSION (op 9) to every live session of a shard (of ``shard_count`` shards, or of every
        count); return how many."""
        links = self._live_links(shard_id, shard_count)
        for link in links:
            self.send_invalid_session(link, resumable=resumable)
        return len(links)

    def drop_shard(self, shard_id: int, shard_count: int | None = None) -> int:
        """Cut the TCP connection of every live session of a shard (of ``shard_count`` shards, or of every count;
        no close frame); return how many."""
        links = self._live_links(shard_id, shard_count)
        for link in links:
            session = link.session
            link.abort()
            if session is not None:
                self.detach(session, resumable=True)
        return len(links)

    def chaos_step(self) -> str | None:
        """One random RECONNECT or INVALID_SESSION on a random live shard; return what was done."""
        shards = self.referee.live_shard_ids()
        if not shards:
            return None
        shard_id = self.rng.choice(shards)
        action = self.rng.choice(("reconnect", "invalidate", "invalidate_resumable"))
        if action == "reconnect":
            self.reconnect_shard(shard_id)
        else:
            self.invalidate_shard(shard_id, resumable=action == "invalidate_resumable")
        return f"{action} shard {shard_id}"

    def reap(self) -> int:
        """Close connections without a heartbeat for too long (4009) and forget expired sessions."""
        now = self.clock()
        timeout = self.options.zombie_timeout
        reaped = 0
        for link in list(self.links):
            if link.closing or now - link.last_heartbeat <= timeout:
                continue
            reaped += 1
            session = link.session
            self.close_link(link, CloseCode.SESSION_TIMED_OUT, "Session timed out")
            if session is not None and session.link is link:
                self.detach(session, resumable=True)
        if reaped:
            self.referee.count("zombies_reaped", reaped)
        for session in self.sessions.expired(now):
            self.sessions.forget(session)
        return reaped

    # --- report -----------------------------------------------------------------------------------------
    def session_start_limit(self) -> dict[str, int]:
        """The ``session_start_limit`` object of ``/gateway/bot``."""
        return {
            "total": self.options.session_start_total,
            "remaining": self.referee.session_start_remaining,
            "reset_after": int(self.referee.budget_reset_after(self.clock()) * 1000),
            "max_concurrency": self.options.max_concurrency,
        }

    def stats(self) -> dict[str, Any]:
        """Every referee counter plus a few gauges, JSON-ready."""
        now = self.clock()
        data = self.referee.snapshot(now)
        data.update(
            shard_count=self.options.shards,
            recommended_shards=self.recommended_shards(),
            max_guilds_per_shard=self.options.max_guilds_per_shard,
            guilds=len(self.world.guilds),
            connections=len(self.links),
            sessions_resumable=sum(1 for s in self.sessions if not s.live),
            messages_posted=self.referee.counters["messages_posted"],
            uptime_seconds=round(now - self.started_at, 3),
        )
        return data

    def reset(self) -> None:
        """Zero the counters (``POST /_sim/reset``)."""
        self.referee.reset(self.clock())
