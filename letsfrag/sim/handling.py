"""The handling referee: was every ``!ping <n>`` and every member join answered exactly once? (pure; time passed in).

Two kinds of handled events share one numbering ``n``: a ``!ping <n>`` message (answered ``pong <n>``) and a
member join of a user named ``joiner-<n>`` (answered ``welcome joiner-<n>``), the event bots answer that
carries no snowflake of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ANSWER = re.compile(r"\b(?:pong |welcome joiner-)(\d+)\b", re.IGNORECASE)
#: the kinds of handled events
KINDS = ("ping", "join")


@dataclass(slots=True)
class SentMessage:
    """One handled event the simulator sent: a ``!ping <n>`` (``kind`` ping) or a member join (``kind`` join)."""

    n: int
    message_id: int
    sent_at: float
    delivered_at: float | None
    answers: int = 0
    kind: str = "ping"


class HandlingReferee:
    """Counts answers per sent message.

    A message is *delivered* once a live session got it — at send time, or later when a RESUME replayed
    it. An answer is attributed through ``message_reference.message_id`` when present, else by parsing
    ``pong <n>`` from the content.
    """

    def __init__(self, answer_timeout: float) -> None:
        self.answer_timeout = answer_timeout
        self.next_n = 1
        self.by_id: dict[int, SentMessage] = {}
        self.by_n: dict[int, SentMessage] = {}
        self.replies = 0
        self.unattributed = 0

    def reset(self) -> None:
        """Forget every message and answer (``n`` keeps increasing so late answers stay unattributed)."""
        self.by_id.clear()
        self.by_n.clear()
        self.replies = 0
        self.unattributed = 0

    def take_n(self) -> int:
        """The number of the next ping."""
        n = self.next_n
        self.next_n += 1
        return n

    def sent(self, n: int, message_id: int, now: float, *, delivered: bool, kind: str = "ping") -> None:
        """Record a sent event; ``delivered`` = at least one live session got it; ``message_id`` is its tag
        (the message id of a ping, the joining user's id of a join)."""
        record = SentMessage(n=n, message_id=message_id, sent_at=now, delivered_at=now if delivered else None,
                             kind=kind)
        self.by_id[message_id] = record
        self.by_n[n] = record

    def delivered(self, message_id: int, now: float) -> None:
        """A RESUME replayed this message to a live session."""
        record = self.by_id.get(message_id)
        if record is not None and record.delivered_at is None:
            record.delivered_at = now

    def reply(self, referenced_id: int | None, content: str) -> SentMessage | None:
        """Attribute one answer; return the message it answers, or None when it answers nothing known."""
        self.replies += 1
        record = self.by_id.get(referenced_id) if referenced_id is not None else None
        if record is None:
            match = _ANSWER.search(content or "")
            if match:
                record = self.by_n.get(int(match.group(1)))
        if record is None:
            self.unattributed += 1
            return None
        record.answers += 1
        return record

    def snapshot(self, now: float) -> dict[str, int]:
        """Classify every message at time ``now``."""
        once = twice = unanswered = pending = undeliverable = 0
        per_kind = dict.fromkeys(KINDS, 0)
        for record in self.by_id.values():
            per_kind[record.kind] = per_kind.get(record.kind, 0) + 1
            if record.answers == 1:
                once += 1
            elif record.answers > 1:
                twice += 1
            elif record.delivered_at is None:
                undeliverable += 1
            elif now - record.delivered_at > self.answer_timeout:
                unanswered += 1
            else:
                pending += 1
        return {
            "sent": len(self.by_id),
            "answered_once": once,
            "answered_twice_or_more": twice,
            "unanswered_live": unanswered,
            "pending": pending,
            "undeliverable": undeliverable,
            "replies": self.replies,
            "unattributed_replies": self.unattributed,
            **{f"sent_{kind}": count for kind, count in per_kind.items()},
        }
