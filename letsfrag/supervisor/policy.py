"""Pure supervisor decisions: restart or not, how long to wait, and whether a cluster looks healthy.

Every function takes ``now`` (monotonic seconds) instead of reading a clock, and randomness comes from an
injected :class:`random.Random`, so tests replay exact sequences without sleeping.
"""

from __future__ import annotations

import random
import signal
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from letsfrag.config import BackoffSettings, RestartSettings
from letsfrag.contract.exitcodes import NO_RESTART_CODES, CloseCode, ExitCode

__all__ = [
    "FATAL_CLOSE_NAMES",
    "MAX_JITTER",
    "Decision",
    "ExitAction",
    "ExitInfo",
    "MemoryWatch",
    "RestartTracker",
    "backoff_delay",
    "describe_exit",
    "fatal_close_reason",
    "is_hung",
]

#: short English names of Discord's fatal gateway close codes
FATAL_CLOSE_NAMES: dict[int, str] = {
    CloseCode.AUTHENTICATION_FAILED: "authentication failed",
    CloseCode.INVALID_SHARD: "invalid shard",
    CloseCode.SHARDING_REQUIRED: "sharding required",
    CloseCode.INVALID_API_VERSION: "invalid API version",
    CloseCode.INVALID_INTENTS: "invalid intents",
    CloseCode.DISALLOWED_INTENTS: "disallowed intents",
}

#: how many exits :attr:`RestartTracker.history` remembers
HISTORY_LIMIT = 100


def fatal_close_reason(close_code: int) -> str:
    """``"Discord closed with 4004: authentication failed"`` — the text for :attr:`ExitInfo.fatal_reason`."""
    name = FATAL_CLOSE_NAMES.get(close_code)
    return f"Discord closed with {close_code}: {name}" if name else f"Discord closed with {close_code}"


# --------------------------------------------------------------------------------------------- settings

# The settings are the config's own models, :class:`letsfrag.config.BackoffSettings` and
# :class:`letsfrag.config.RestartSettings` (validated there, with the config's messages).

#: the largest jitter a delay gets: the config allows ``backoff.jitter`` up to 1, which could make a delay 0
MAX_JITTER = 0.99


# --------------------------------------------------------------------------------------------- decisions


class ExitAction(StrEnum):
    """What the supervisor does after a cluster process ended."""

    RESTART = "restart"
    #: give up: the cluster is FAILED until someone restarts it by hand
    FAIL = "fail"
    #: stay stopped; not a failure (clean exit, fenced, stopped on purpose)
    STOP = "stop"


@dataclass(frozen=True)
class ExitInfo:
    """How a process ended: ``code`` None with ``signal`` set means killed by that signal.

    ``fatal_reason`` is set when the cluster reported a fatal gateway close (see :func:`fatal_close_reason`).
    """

    code: int | None
    signal: int | None
    fatal_reason: str | None = None

    @classmethod
    def from_returncode(cls, returncode: int | None, fatal_reason: str | None = None) -> ExitInfo:
        """Build from a :mod:`subprocess`/:mod:`asyncio` return code (negative = killed by that signal)."""
        if returncode is not None and returncode < 0:
            return cls(code=None, signal=-returncode, fatal_reason=fatal_reason)
        return cls(code=returncode, signal=None, fatal_reason=fatal_reason)


@dataclass(frozen=True)
class Decision:
    """The verdict on one exit: what to do, after how many seconds, and why (for people)."""

    action: ExitAction
    delay: float
    reason: str


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(info: ExitInfo) -> str:
    """A short text for an exit: ``"exited cleanly (exit 0)"``, ``"crashed (exit 1)"``, ``"killed by SIGKILL"``."""
    if info.signal is not None:
        return f"killed by {_signal_name(info.signal)}"
    if info.code is None:
        return "exited (status unknown)"
    if info.code < 0:
        return f"killed by {_signal_name(-info.code)}"
    if info.code == ExitCode.OK:
        return "exited cleanly (exit 0)"
    if info.code == ExitCode.CONFIG:
        return "configuration error (exit 78)"
    if info.code == ExitCode.FATAL_GATEWAY:
        return "fatal gateway close (exit 77)"
    if info.code == ExitCode.FENCED:
        return "fenced: shards moved to another host"
    return f"crashed (exit {info.code})"


def _short_duration(seconds: float) -> str:
    """``600`` -> ``"10m"``, ``3600`` -> ``"1h"``, ``90`` -> ``"90s"``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def backoff_delay(attempt: int, settings: BackoffSettings, rng: random.Random) -> float:
    """Seconds to wait before restart number ``attempt`` (0-based): ``initial × factor^attempt``, capped, jittered.

    Attempt 0 gives about ``initial``; the jitter is uniform in ``± jitter`` of the capped delay.
    """
    if attempt < 0:
        raise ValueError(f"attempt cannot be negative, found {attempt!r}")
    try:
        base = min(settings.initial * settings.factor**attempt, settings.max)
    except OverflowError:
        base = settings.max
    jitter = min(settings.jitter, MAX_JITTER)
    if jitter == 0:
        return base
    return base * (1.0 + rng.uniform(-jitter, jitter))


class RestartTracker:
    """The restart state of one cluster: backoff, intensity limit and FAILED.

    Feed it :meth:`on_ready` and :meth:`on_exit`; it returns what to do. ``restarts`` counts every restart it
    granted, ``failed`` is True once it gave up, ``history`` lists ``(now, reason)`` of recent exits.
    """

    def __init__(self, settings: RestartSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng if rng is not None else random.Random()
        self.restarts = 0
        self.failed = False
        self.history: list[tuple[float, str]] = []
        self.consecutive_failures = 0
        self._ready_since: float | None = None
        self._recent: deque[float] = deque()

    def on_ready(self, now: float) -> None:
        """The cluster reported READY (again); keep the earliest time of an unbroken READY period."""
        if self._ready_since is None:
            self._ready_since = now

    def on_exit(self, now: float, info: ExitInfo, *, requested: bool = False, cause: str | None = None) -> Decision:
        """Decide what follows the end of the cluster process.

        ``requested=True``: the supervisor stopped it on purpose (revoke, drain, shutdown) -> STOP, not counted.
        A restart the supervisor forces (hang, memory) is an ordinary exit with ``requested=False``; ``cause``
        (``"hung: no heartbeat for 30s"``) then leads the reason and the exit counts toward backoff and the
        intensity limit, so a cluster that hangs every minute still ends FAILED.
        """
        ready_since, self._ready_since = self._ready_since, None
        if ready_since is not None and now - ready_since >= self.settings.backoff.reset_after:
            self.consecutive_failures = 0
        decision = self._decide(now, info, requested, cause)
        self.history.append((now, decision.reason))
        del self.history[:-HISTORY_LIMIT]
        return decision

    def _decide(self, now: float, info: ExitInfo, requested: bool, cause: str | None) -> Decision:
        what = describe_exit(info)
        if cause:
            what = f"{cause} ({what})"
        if requested:
            return Decision(ExitAction.STOP, 0.0, f"stopped on request ({what})")
        if self.failed:
            return Decision(ExitAction.FAIL, 0.0, f"already failed; {what}")
        if info.fatal_reason:
            return self._fail(info.fatal_reason)
        if info.signal is None and info.code in NO_RESTART_CODES:
            return self._fail(what)
        if info.signal is None and info.code == ExitCode.FENCED:
            return Decision(ExitAction.STOP, 0.0, what)
        policy = self.settings.policy
        clean = info.signal is None and info.code == ExitCode.OK
        if policy == "never" or (clean and policy == "on-failure"):
            return Decision(ExitAction.STOP, 0.0, f"{what}; restart policy {policy}")
        return self._restart(now, what)

    def _fail(self, reason: str) -> Decision:
        self.failed = True
        return Decision(ExitAction.FAIL, 0.0, reason)

    def _restart(self, now: float, what: str) -> Decision:
        window = self.settings.window
        self._recent.append(now)
        while self._recent and now - self._recent[0] >= window:
            self._recent.popleft()
        if len(self._recent) > self.settings.max_restarts:
            return self._fail(f"crash loop: {len(self._recent)} exits in {_short_duration(window)}; last {what}")
        delay = backoff_delay(self.consecutive_failures, self.settings.backoff, self._rng)
        self.consecutive_failures += 1
        self.restarts += 1
        return Decision(ExitAction.RESTART, delay, what)

    def reset(self) -> None:
        """A manual restart: clear FAILED, the backoff and the history (``restarts`` keeps its total)."""
        self.failed = False
        self.history.clear()
        self.consecutive_failures = 0
        self._ready_since = None
        self._recent.clear()


# --------------------------------------------------------------------------------------------- health


class MemoryWatch:
    """Says "restart" only after RSS stayed above ``limit`` for ``samples`` samples in a row."""

    def __init__(self, limit: int | None, samples: int = 3) -> None:
        if limit is not None and limit <= 0:
            raise ValueError(f"the memory limit must be positive or None, found {limit!r}")
        if samples < 1:
            raise ValueError(f"samples must be at least 1, found {samples!r}")
        self.limit = limit
        self.samples = samples
        self.streak = 0

    def sample(self, rss: int) -> bool:
        """Record one RSS reading (bytes); True while the last ``samples`` readings were all over the limit."""
        if self.limit is None or rss <= self.limit:
            self.streak = 0
            return False
        self.streak += 1
        return self.streak >= self.samples

    def reset(self) -> None:
        """Forget the streak (call when the process is replaced)."""
        self.streak = 0


def is_hung(now: float, last_heartbeat: float | None, started_at: float, hang_timeout: float) -> bool:
    """True when no heartbeat came for more than ``hang_timeout`` seconds (counted from the start if none yet).

    A ``hang_timeout`` of 0 or less disables the check.
    """
    if hang_timeout <= 0:
        return False
    since = last_heartbeat if last_heartbeat is not None else started_at
    return now - since > hang_timeout
