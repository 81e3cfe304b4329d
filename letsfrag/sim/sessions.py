"""Gateway sessions: sequence numbers, the RESUME replay buffer, and which connection carries them."""

from __future__ import annotations

import secrets
from collections import deque
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


class SessionRegistry:
    """Every known session — live or waiting to be resumed — by id and by shard."""

    def __init__(self, buffer_size: int) -> None:
        self.buffer_size = buffer_size
        self.by_id: dict[str, Session] = {}
        self.by_shard: dict[int, set[Session]] = {}

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
        self.by_shard.setdefault(shard_id, set()).add(session)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The session with this id, if it still exists."""
        return self.by_id.get(session_id) if session_id else None

    def forget(self, session: Session) -> None:
        """Remove a session for good (invalidated or expired)."""
        self.by_id.pop(session.session_id, None)
        shard_sessions = self.by_shard.get(session.shard_id)
        if shard_sessions is not None:
            shard_sessions.discard(session)
            if not shard_sessions:
                del self.by_shard[session.shard_id]

    def for_shard(self, shard_id: int) -> list[Session]:
        """Sessions of a shard, live or resumable."""
        return list(self.by_shard.get(shard_id, ()))

    def live_for_shard(self, shard_id: int) -> list[Session]:
        """Sessions of a shard with a connection."""
        return [s for s in self.by_shard.get(shard_id, ()) if s.live]

    def expired(self, now: float) -> list[Session]:
        """Detached sessions whose resume window is over."""
        return [s for s in self.by_id.values() if not s.live and (s.resumable_until or 0.0) <= now]

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self.by_id.values()))

    def __len__(self) -> int:
        return len(self.by_id)
