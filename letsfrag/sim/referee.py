"""The referee: counts every rule a deployment breaks (pure; every method takes ``now``)."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Any

from letsfrag.sim.handling import HandlingReferee

BUDGET_PERIOD = 86_400.0  # session_start_limit resets daily


class IdentifyVerdict(enum.Enum):
    """What an IDENTIFY gets."""

    ACCEPTED = "accepted"
    #: too early for its bucket, let through because violations are only counted
    ACCEPTED_VIOLATION = "accepted_violation"
    #: too early for its bucket and refused
    RATE_LIMITED = "rate_limited"
    #: the session start budget is used up and refused
    EXHAUSTED = "exhausted"

    @property
    def accepted(self) -> bool:
        return self in (IdentifyVerdict.ACCEPTED, IdentifyVerdict.ACCEPTED_VIOLATION)


@dataclass(frozen=True, slots=True)
class IdentifyResult:
    """The verdict on one IDENTIFY, its bucket and how much too early it came (0 when in time)."""

    verdict: IdentifyVerdict
    bucket: int
    early_by: float = 0.0


def _str_keys(counter: dict[int, int] | Counter[int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(counter.items())}


class Referee:
    """Counters and the two physical rules: identify windows and one live session per shard."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        identify_window: float,
        enforce_window: bool,
        session_start_total: int,
        reject_when_exhausted: bool,
        answer_timeout: float,
        now: float,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.identify_window = identify_window
        self.enforce_window = enforce_window
        self.session_start_total = session_start_total
        self.reject_when_exhausted = reject_when_exhausted
        self.handling = HandlingReferee(answer_timeout)
        # physical state, kept across reset()
        self.last_identify: dict[int, float] = {}
        #: shard -> when its latest IDENTIFY arrived (the simulator's monotonic clock)
        self.identified_at: dict[int, float] = {}
        self.live: dict[int, set[str]] = {}
        self.budget_reset_at = now + BUDGET_PERIOD
        self._zero(now)

    def _zero(self, now: float) -> None:
        self.identifies: Counter[int] = Counter()
        self.violations: Counter[int] = Counter()
        self.duplicates: Counter[int] = Counter()
        self.overlap_since: dict[int, float] = {s: now for s, ids in self.live.items() if len(ids) > 1}
        self.longest_overlap = 0.0
        self.session_start_remaining = self.session_start_total
        self.counters: Counter[str] = Counter()
        self.close_codes: Counter[int] = Counter()
        self.compressions: Counter[str] = Counter()

    def reset(self, now: float) -> None:
        """Zero every counter; live sessions and identify windows are physical and stay."""
        self._zero(now)
        self.handling.reset()

    def count(self, name: str, amount: int = 1) -> None:
        """Bump a named counter (resumes, invalid_sessions, unknown_routes, ...)."""
        self.counters[name] += amount

    def connection_opened(self, compression: str | None) -> None:
        """A gateway connection was accepted with this transport compression (None = plain text)."""
        self.compressions[compression or "none"] += 1

    def closed_with(self, code: int) -> None:
        """The simulator closed a connection with ``code``."""
        self.close_codes[code] += 1

    # --- identify -----------------------------------------------------------------------------------
    def bucket(self, shard_id: int) -> int:
        """Discord's identify bucket of a shard."""
        return shard_id % self.max_concurrency

    def identify(self, shard_id: int, now: float) -> IdentifyResult:
        """Judge one IDENTIFY of ``shard_id`` arriving at ``now``.

        One IDENTIFY per bucket per window: the window is measured from the last *accepted* IDENTIFY of
        the bucket. An accepted IDENTIFY spends one session start.
        """
        if now >= self.budget_reset_at:
            self.session_start_remaining = self.session_start_total
            self.budget_reset_at = now + BUDGET_PERIOD
        self.identifies[shard_id] += 1
        self.identified_at[shard_id] = now
        bucket = self.bucket(shard_id)
        if self.reject_when_exhausted and self.session_start_remaining <= 0:
            self.count("session_start_rejections")
            return IdentifyResult(IdentifyVerdict.EXHAUSTED, bucket)
        last = self.last_identify.get(bucket)
        early_by = 0.0 if last is None else max(0.0, self.identify_window - (now - last))
        verdict = IdentifyVerdict.ACCEPTED
        if early_by > 0:
            self.violations[bucket] += 1
            if self.enforce_window:
                return IdentifyResult(IdentifyVerdict.RATE_LIMITED, bucket, early_by)
            verdict = IdentifyVerdict.ACCEPTED_VIOLATION
        self.last_identify[bucket] = now
        self.session_start_remaining = max(0, self.session_start_remaining - 1)
        return IdentifyResult(verdict, bucket, early_by)

    def budget_reset_after(self, now: float) -> float:
        """Seconds until ``session_start_limit`` is refilled."""
        return max(0.0, self.budget_reset_at - now)

    # --- live sessions --------------------------------------------------------------------------------
    def session_live(self, shard_id: int, session_id: str, now: float, *, drain: bool = False) -> None:
        """A session of ``shard_id`` became live (READY or RESUMED sent). A ``drain`` (a letsfrag replay side
        connection, which closes after RESUMED) is counted in ``replay_drains``, not as a live session."""
        if drain:
            self.counters["replay_drains"] += 1
            return
        ids = self.live.setdefault(shard_id, set())
        if session_id in ids:
            return
        if ids:
            self.duplicates[shard_id] += 1
            self.overlap_since.setdefault(shard_id, now)
        ids.add(session_id)

    def session_dead(self, shard_id: int, session_id: str, now: float) -> None:
        """A session of ``shard_id`` stopped being live (socket closed, reaped, invalidated)."""
        ids = self.live.get(shard_id)
        if ids is None or session_id not in ids:
            return
        ids.discard(session_id)
        if not ids:
            del self.live[shard_id]
        if len(ids) <= 1 and shard_id in self.overlap_since:
            self.longest_overlap = max(self.longest_overlap, now - self.overlap_since.pop(shard_id))

    def live_shards(self) -> list[int]:
        """Shard ids with at least one live session."""
        return sorted(self.live)

    # --- report -----------------------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, Any]:
        """Every counter as a JSON-ready dict (string keys for shard and bucket ids)."""
        longest = max([self.longest_overlap] + [now - since for since in self.overlap_since.values()])
        return {
            "identifies": {"total": sum(self.identifies.values()), "per_shard": _str_keys(self.identifies)},
            "identified_at": {str(s): round(t, 6) for s, t in sorted(self.identified_at.items())},
            "identify_violations": {"total": sum(self.violations.values()), "per_bucket": _str_keys(self.violations)},
            "sessions_active": {str(s): len(ids) for s, ids in sorted(self.live.items())},
            "shards_ready": self.live_shards(),
            "duplicate_sessions": {
                "count": sum(self.duplicates.values()),
                "longest_overlap_seconds": round(longest, 3),
                "per_shard": _str_keys(self.duplicates),
                "overlapping_now": sorted(self.overlap_since),
            },
            "resumes": self.counters["resumes"],
            "resume_failures": self.counters["resume_failures"],
            "replay_drains": self.counters["replay_drains"],
            "invalid_sessions": self.counters["invalid_sessions"],
            "reconnects": self.counters["reconnects"],
            "zombies_reaped": self.counters["zombies_reaped"],
            "session_start_remaining": self.session_start_remaining,
            "session_start_rejections": self.counters["session_start_rejections"],
            "unknown_routes": self.counters["unknown_routes"],
            "rest_requests": self.counters["rest_requests"],
            "gateway_rate_limited": self.counters["gateway_rate_limited"],
            "member_chunk_requests": self.counters["member_chunk_requests"],
            "close_codes": _str_keys(self.close_codes),
            "gateway_connections": dict(sorted(self.compressions.items())),
            "handling": self.handling.snapshot(now),
        }
