"""Gateway sessions: sequence numbers, the RESUME replay buffer, and which connection carries them."""

from __future__ import annotations

import secrets
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from letsfrag.sim import payloads


class Link(Protocol):
    """What a session needs from the connection carrying it (implemented by the gateway)."""

    conn_id: int
    #: monotonic time of the last heartbeat (or of HELLO)
    last_heartbeat: float
    #: set once a close or abort was requested; nothing more is sent
    closing: bool
    #: the session this connection identified or resumed, if any
    session: Session | None

    def send(self, frame: str) -> None:
        """Queue one text frame; frames leave in the order queued."""

    def close(self, code: int, reason: str = "") -> None:
        """Queue a close frame after everything already queued."""

    def abort(self) -> None:
        """Drop the TCP connection at once, without a close frame."""


@dataclass(eq=False)
class Session:
    """One gateway session (what IDENTIFY creates and RESUME continues).

    ``link`` is set while the session is *live*: its connection is open and READY or RESUMED was sent.
    A detached session keeps buffering dispatches until ``resumable_until``.
    """

    session_id: str
    shard_id: int
    shard_count: int
    intents: int
    buffer_size: int
    seq: int = 0
    link: Link | None = None
    resumable_until: float | None = None
    dropped_upto: int = 0
    #: the handover epoch (``?letsfrag_handover=``) of the connection that identified or resumed it: a successor's
    handover_epoch: int | None = None
    #: (seq, frame, tag) — tag is the id of a handling-referee message, else 0
    buffer: deque[tuple[int, str, int]] = field(default_factory=deque)

    @property
    def live(self) -> bool:
        """Whether a connection currently carries this session."""
        return self.link is not None

    def next_frame(self, event: str, data_json: str, *, buffered: bool = True, tag: int = 0) -> str:
        """Number a dispatch, keep it for replay (unless ``buffered`` is False), and return the frame."""
        self.seq += 1
        frame = payloads.dispatch_frame(self.seq, event, data_json)
        if buffered:
            self.buffer.append((self.seq, frame, tag))
            if len(self.buffer) > self.buffer_size:
                self.dropped_upto = self.buffer.popleft()[0]
        return frame

    def dispatch(self, event: str, data_json: str, *, tag: int = 0) -> bool:
        """Send (when live) or only buffer (when detached) one dispatch; return whether it was sent."""
        frame = self.next_frame(event, data_json, tag=tag)
        if self.link is not None:
            self.link.send(frame)
            return True
        return False

    def replay_after(self, seq: int) -> list[tuple[str, int]] | None:
        """(frame, tag) pairs after ``seq`` for a RESUME, or None when some are no longer buffered."""
        if seq < self.dropped_upto or seq > self.seq:
            return None
        return [(frame, tag) for s, frame, tag in self.buffer if s > seq]


#: a shard of one shard count: ``(shard_id, num_shards)`` — sessions of two shard counts are different shards
ShardKey = tuple[int, int]


class SessionRegistry:
    """Every known session — live or waiting to be resumed — by id and by shard ``(shard_id, num_shards)``.

    Sessions of several shard counts may exist at once (a reshard's overlap, as Discord allows): a guild's
    events go to the sessions of every count whose ``(guild_id >> 22) % num_shards == shard_id``.
    """

    def __init__(self, buffer_size: int) -> None:
        self.buffer_size = buffer_size
        self.by_id: dict[str, Session] = {}
        self.by_shard: dict[ShardKey, set[Session]] = {}
        #: shard count -> how many sessions of it exist
        self.shard_counts: Counter[int] = Counter()

    def create(self, shard_id: int, shard_count: int, intents: int, *, extra_buffer: int = 0) -> Session:
        """A new session with a fresh random id; ``extra_buffer`` more replayable dispatches (its GUILD_CREATEs)."""
        session = Session(
            session_id=secrets.token_hex(16),
            shard_id=shard_id,
            shard_count=shard_count,
            intents=intents,
            buffer_size=self.buffer_size + extra_buffer,
        )
        self.by_id[session.session_id] = session
        self.by_shard.setdefault((shard_id, shard_count), set()).add(session)
        self.shard_counts[shard_count] += 1
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The session with this id, if it still exists."""
        return self.by_id.get(session_id) if session_id else None

    def forget(self, session: Session) -> None:
        """Remove a session for good (invalidated or expired)."""
        if self.by_id.pop(session.session_id, None) is None:
            return
        key = (session.shard_id, session.shard_count)
        shard_sessions = self.by_shard.get(key)
        if shard_sessions is not None:
            shard_sessions.discard(session)
            if not shard_sessions:
                del self.by_shard[key]
        self.shard_counts[session.shard_count] -= 1
        if self.shard_counts[session.shard_count] <= 0:
            del self.shard_counts[session.shard_count]

    def for_shard(self, shard_id: int, shard_count: int | None = None) -> list[Session]:
        """Sessions of a shard, live or resumable: of ``shard_count`` shards, or of every shard count."""
        if shard_count is not None:
            return list(self.by_shard.get((shard_id, shard_count), ()))
        return [s for count in sorted(self.shard_counts) for s in self.by_shard.get((shard_id, count), ())]

    def for_guild(self, guild_id: int) -> list[Session]:
        """Sessions (live or resumable) that carry a guild's events: one shard per shard count in use."""
        return [s for count in sorted(self.shard_counts)
                for s in self.by_shard.get((payloads.shard_for(guild_id, count), count), ())]

    def live_for_shard(self, shard_id: int, shard_count: int | None = None) -> list[Session]:
        """Sessions of a shard with a connection (of ``shard_count`` shards, or of every count)."""
        return [s for s in self.for_shard(shard_id, shard_count) if s.live]

    def expired(self, now: float) -> list[Session]:
        """Detached sessions whose resume window is over."""
        return [s for s in self.by_id.values() if not s.live and (s.resumable_until or 0.0) <= now]

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self.by_id.values()))

    def __len__(self) -> int:
        return len(self.by_id)
