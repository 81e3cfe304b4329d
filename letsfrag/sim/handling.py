"""The handling referee: was every ``!ping <n>`` answered exactly once? (pure; time passed in)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PONG = re.compile(r"\bpong (\d+)\b", re.IGNORECASE)


@dataclass(slots=True)
class SentMessage:
    """One ``!ping <n>`` the simulator sent."""

    n: int
    message_id: int
    sent_at: float
    delivered_at: float | None
    answers: int = 0


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

    def sent(self, n: int, message_id: int, now: float, *, delivered: bool) -> None:
        """Record a ping; ``delivered`` = at least one live session got it."""
        record = SentMessage(n=n, message_id=message_id, sent_at=now, delivered_at=now if delivered else None)
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
            match = _PONG.search(content or "")
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
        for record in self.by_id.values():
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
        }
