"""The referee: counts every rule a deployment breaks (pure; every method takes ``now``)."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Any

from letsfrag.sim.handling import HandlingReferee
from letsfrag.sim.sessions import ShardKey

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


def _order(key: ShardKey) -> tuple[int, int]:
    """Shards sorted by shard count, then id."""
    return (key[1], key[0])


def _str_keys(counter: dict[int, int] | Counter[int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(counter.items())}


class Referee:
    """Counters and the two physical rules: identify windows and one live session per shard.

    A shard may have two live sessions during an *announced* handover: the newer of the two sessions (the one
    that first went live later; a RESUME keeps a session's place) was opened by a letsfrag successor (its
    connection carried ``?letsfrag_handover=<epoch>``, :data:`letsfrag.contract.handover.GATEWAY_PARAM`), and the older
    one is not a successor of the same or a later epoch. Such an overlap is counted in ``announced_overlaps``; one
    that lasts longer than ``handover_deadline`` is a violation (``over_deadline``). Any other second live
    session — a stray one next to a former successor, or a third — is a duplicate (``duplicate_sessions``).

    A shard is ``(shard_id, num_shards)``: sessions of two shard counts (a reshard's generations) are never
    duplicates of each other. In the snapshot a shard of the configured count ``shards`` is named ``"<id>"``,
    one of another count ``"<id>/<count>"``.
    """

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
        handover_deadline: float = 120.0,
        shards: int = 1,
    ) -> None:
        self.shards = shards
        self.max_concurrency = max_concurrency
        self.identify_window = identify_window
        self.enforce_window = enforce_window
        self.session_start_total = session_start_total
        self.reject_when_exhausted = reject_when_exhausted
        self.handover_deadline = handover_deadline
        self.handling = HandlingReferee(answer_timeout)
        # physical state, kept across reset()
        self.last_identify: dict[int, float] = {}
        #: shard -> when its latest IDENTIFY arrived (the simulator's monotonic clock)
        self.identified_at: dict[int, float] = {}
        self.live: dict[ShardKey, set[str]] = {}
        #: session id -> the handover epoch its connection announced (successor sessions only)
        self.announced: dict[str, int] = {}
        #: session id -> the order in which sessions first became live (a RESUME keeps a session's place)
        self.first_seen: dict[str, int] = {}
        self.budget_reset_at = now + BUDGET_PERIOD
        self._zero(now)

    def _zero(self, now: float) -> None:
        self.identifies: Counter[int] = Counter()
        self.violations: Counter[int] = Counter()
        self.duplicates: Counter[ShardKey] = Counter()
        self.overlap_since: dict[ShardKey, float] = {s: now for s in self.live if self._kind(s) == "split"}
        self.longest_overlap = 0.0
        self.announced_overlaps: Counter[ShardKey] = Counter()
        #: shard -> when its announced overlap began (still two live sessions)
        self.announced_since: dict[ShardKey, float] = {s: now for s in self.live if self._kind(s) == "announced"}
        #: shard -> its longest finished announced overlap, seconds
        self.announced_longest: dict[ShardKey, float] = {}
        self.over_deadline: Counter[ShardKey] = Counter()
        #: shards whose current announced overlap was already counted in ``over_deadline``
        self._overdue: set[ShardKey] = set()
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
    def key(self, shard_id: int, shard_count: int | None = None) -> ShardKey:
        """The shard ``(shard_id, num_shards)``; ``shard_count`` None = the configured count."""
        return (shard_id, self.shards if shard_count is None else shard_count)

    def name(self, key: ShardKey) -> str:
        """A shard's name in the snapshot: ``"<id>"`` for the configured count, else ``"<id>/<count>"``."""
        return str(key[0]) if key[1] == self.shards else f"{key[0]}/{key[1]}"

    def _names(self, keys: Any) -> list[int | str]:
        return [k[0] if k[1] == self.shards else self.name(k) for k in sorted(keys, key=_order)]

    def _per_shard(self, values: dict[ShardKey, Any]) -> dict[str, Any]:
        return {self.name(k): v for k, v in sorted(values.items(), key=lambda kv: _order(kv[0]))}

    def session_live(self, shard_id: int, session_id: str, now: float, *, drain: bool = False,
                     announced: int | None = None, shard_count: int | None = None) -> None:
        """A session of ``shard_id`` (of ``shard_count`` shards, default the configured count) became live
        (READY or RESUMED sent). A ``drain`` (a letsfrag replay side connection, which closes after RESUMED) is
        counted in ``replay_drains``, not as a live session. ``announced`` is the handover epoch the session's
        connection carried (a successor), else None."""
        if drain:
            self.counters["replay_drains"] += 1
            return
        if announced is not None:
            self.announced.setdefault(session_id, announced)
        self.first_seen.setdefault(session_id, len(self.first_seen))
        shard = self.key(shard_id, shard_count)
        ids = self.live.setdefault(shard, set())
        if session_id in ids:
            return
        before = self._kind(shard)
        ids.add(session_id)
        after = self._kind(shard)
        if after == "split":
            self.duplicates[shard] += 1
        elif after == "announced" and before == "single":
            self.announced_overlaps[shard] += 1
        self._moved(shard, before, after, now)

    def session_dead(self, shard_id: int, session_id: str, now: float, *, shard_count: int | None = None) -> None:
        """A session of ``shard_id`` (of ``shard_count`` shards) stopped being live (socket closed, reaped,
        invalidated)."""
        shard = self.key(shard_id, shard_count)
        ids = self.live.get(shard)
        if ids is None or session_id not in ids:
            return
        before = self._kind(shard)
        ids.discard(session_id)
        if not ids:
            del self.live[shard]
        self._moved(shard, before, self._kind(shard), now)

    def _kind(self, shard_id: ShardKey) -> str:
        """``single`` (0-1 live sessions), ``announced`` (an announced handover's two) or ``split``."""
        ids = self.live.get(shard_id, ())
        if len(ids) <= 1:
            return "single"
        if len(ids) == 2:
            older, newer = sorted(ids, key=lambda sid: self.first_seen.get(sid, -1))
            new_epoch, old_epoch = self.announced.get(newer), self.announced.get(older)
            # the newer session is the successor: announced, and of a later epoch than an older successor's
            if new_epoch is not None and (old_epoch is None or old_epoch < new_epoch):
                return "announced"
        return "split"

    def _moved(self, shard_id: ShardKey, before: str, after: str, now: float) -> None:
        """Start and end the overlap timers of one shard on a change of its kind."""
        if before == "announced" and after != "announced":
            self._end_announced(shard_id, now)
        if before != "announced" and after == "announced":
            self.announced_since.setdefault(shard_id, now)
        if after == "split":
            self.overlap_since.setdefault(shard_id, now)
        elif shard_id in self.overlap_since:
            self.longest_overlap = max(self.longest_overlap, now - self.overlap_since.pop(shard_id))

    def _end_announced(self, shard_id: ShardKey, now: float) -> None:
        since = self.announced_since.pop(shard_id, None)
        if since is None:
            return
        self.announced_longest[shard_id] = max(self.announced_longest.get(shard_id, 0.0), now - since)
        self._check_deadline(shard_id, since, now)
        self._overdue.discard(shard_id)

    def _check_deadline(self, shard_id: ShardKey, since: float, now: float) -> None:
        if now - since > self.handover_deadline and shard_id not in self._overdue:
            self._overdue.add(shard_id)
            self.over_deadline[shard_id] += 1

    def check_deadlines(self, now: float) -> None:
        """Count every announced overlap that is running longer than the handover deadline (once each)."""
        for shard_id, since in list(self.announced_since.items()):
            self._check_deadline(shard_id, since, now)

    def live_shards(self, shard_count: int | None = None) -> list[int]:
        """Shard ids of ``shard_count`` shards (default: the configured count) with at least one live session."""
        count = self.shards if shard_count is None else shard_count
        return sorted(s for s, n in self.live if n == count)

    def live_shard_ids(self) -> list[int]:
        """Shard ids with at least one live session, of any shard count."""
        return sorted({s for s, _ in self.live})

    def by_shard_count(self) -> dict[str, dict[str, Any]]:
        """Per shard count in use: its live shard ids and live session count."""
        counts: dict[int, dict[str, Any]] = {}
        for (shard_id, count), ids in sorted(self.live.items(), key=lambda kv: _order(kv[0])):
            entry = counts.setdefault(count, {"shards_ready": [], "sessions": 0})
            entry["shards_ready"].append(shard_id)
            entry["sessions"] += len(ids)
        return {str(count): entry for count, entry in sorted(counts.items())}

    # --- report -----------------------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, Any]:
        """Every counter as a JSON-ready dict (string keys for shard and bucket ids)."""
        longest = max([self.longest_overlap] + [now - since for since in self.overlap_since.values()])
        self.check_deadlines(now)
        announced_longest = dict(self.announced_longest)
        for shard_id, since in self.announced_since.items():
            announced_longest[shard_id] = max(announced_longest.get(shard_id, 0.0), now - since)
        return {
            "identifies": {"total": sum(self.identifies.values()), "per_shard": _str_keys(self.identifies)},
            "identified_at": {str(s): round(t, 6) for s, t in sorted(self.identified_at.items())},
            "identify_violations": {"total": sum(self.violations.values()), "per_bucket": _str_keys(self.violations)},
            "sessions_active": self._per_shard({k: len(ids) for k, ids in self.live.items()}),
            "shards_ready": self.live_shards(),
            "shard_counts": self.by_shard_count(),
            "duplicate_sessions": {
                "count": sum(self.duplicates.values()),
                "longest_overlap_seconds": round(longest, 3),
                "per_shard": self._per_shard(self.duplicates),
                "overlapping_now": self._names(self.overlap_since),
            },
            "announced_overlaps": {
                "count": sum(self.announced_overlaps.values()),
                "per_shard": self._per_shard(self.announced_overlaps),
                "longest_overlap_seconds": round(max(announced_longest.values(), default=0.0), 3),
                "longest_per_shard": self._per_shard({k: round(v, 3) for k, v in announced_longest.items()}),
                "overlapping_now": self._names(self.announced_since),
                "over_deadline": sum(self.over_deadline.values()),
                "deadline_seconds": self.handover_deadline,
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
            "nonce_deduped": self.counters["nonce_deduped"],
            "interaction_callbacks": self.counters["interaction_callbacks"],
            "interaction_already_acknowledged": self.counters["interaction_already_acknowledged"],
            "rest_requests": self.counters["rest_requests"],
            "gateway_rate_limited": self.counters["gateway_rate_limited"],
            "member_chunk_requests": self.counters["member_chunk_requests"],
            "close_codes": _str_keys(self.close_codes),
            "gateway_connections": dict(sorted(self.compressions.items())),
            "handling": self.handling.snapshot(now),
        }
