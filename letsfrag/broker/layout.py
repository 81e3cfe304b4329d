"""The broker's layout: how many shards, how many IDENTIFY buckets, and the clusters they form — resolved from
its config into the :class:`~letsfrag.contract.records.LayoutRecord` it writes to ``{ns}:layout``.

``shards`` and ``max_concurrency`` are either numbers (used as they are) or ``auto``: then the broker asks
Discord (``GET {api_url}/gateway/bot`` with ``Authorization: Bot <token>``) and rounds the recommended shard
count up to a multiple of ``max_concurrency``. Any failure becomes a :class:`DiscordSetupError` with one clear
sentence (never the token, never a traceback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from letsfrag.config import BrokerConfig
from letsfrag.contract.records import LayoutRecord
from letsfrag.errors import DiscordSetupError

from .assignment import round_shard_count

__all__ = ["DEFAULT_API_URL", "GatewayBot", "fetch_gateway_bot", "resolve_layout"]

DEFAULT_API_URL = "https://discord.com/api/v10"


@dataclass(frozen=True, slots=True)
class GatewayBot:
    """The parts of ``/gateway/bot`` letsfrag uses."""

    shards: int
    total: int
    remaining: int
    reset_after: float  # seconds
    max_concurrency: int


def _int_field(data: dict[str, Any], name: str, where: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DiscordSetupError(f"{where}: expected a number in field {name!r}, found {value!r}")
    return int(value)


def _parse_gateway_bot(body: Any, where: str) -> GatewayBot:
    if not isinstance(body, dict):
        raise DiscordSetupError(f"{where}: expected a JSON object, found {type(body).__name__}")
    limit = body.get("session_start_limit")
    if not isinstance(limit, dict):
        raise DiscordSetupError(f"{where}: the reply has no session_start_limit object")
    shards = _int_field(body, "shards", where)
    concurrency = _int_field(limit, "max_concurrency", where)
    if shards < 1 or concurrency < 1:
        raise DiscordSetupError(f"{where}: shards and max_concurrency must be >= 1, found {shards}, {concurrency}")
    return GatewayBot(
        shards=shards,
        total=_int_field(limit, "total", where),
        remaining=_int_field(limit, "remaining", where),
        reset_after=_int_field(limit, "reset_after", where) / 1000.0,
        max_concurrency=concurrency,
    )


async def fetch_gateway_bot(api_url: str | None, token: str, *, timeout: float = 10.0) -> GatewayBot:
    """``GET /gateway/bot``; raise :class:`DiscordSetupError` on any failure (401, network, bad reply)."""
    base = (api_url or DEFAULT_API_URL).rstrip("/")
    where = f"GET {base}/gateway/bot"
    import aiohttp  # only for shards: auto (a broker with a fixed shard count starts faster without it)

    headers = {"Authorization": f"Bot {token}", "User-Agent": "letsfrag (https://github.com/letsfrag, 0.1)"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(f"{base}/gateway/bot", headers=headers) as response,
        ):
            if response.status == 401:
                raise DiscordSetupError(f"{where}: Discord rejected the bot token (401 Unauthorized); "
                                        "check the token in the broker config")
            if response.status == 429:
                raise DiscordSetupError(f"{where}: rate limited by Discord (429); try again later")
            if response.status >= 400:
                raise DiscordSetupError(f"{where}: HTTP {response.status} {response.reason or ''}".rstrip())
            try:
                body = await response.json(content_type=None)
            except ValueError:
                raise DiscordSetupError(f"{where}: the reply is not JSON") from None
    except DiscordSetupError:
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise DiscordSetupError(f"{where}: cannot reach Discord ({reason})") from None
    return _parse_gateway_bot(body, where)


async def resolve_layout(config: BrokerConfig, *, timeout: float = 10.0) -> tuple[LayoutRecord, GatewayBot | None]:
    """The layout record of ``config`` (``updated_at`` unset: the writer stamps it); asks Discord only when
    ``shards`` or ``max_concurrency`` is ``auto``.

    Returns the layout and the ``/gateway/bot`` answer when one was fetched (else ``None``).
    """
    info: GatewayBot | None = None
    if config.shards == "auto" or config.max_concurrency == "auto":
        token = config.effective_token()
        if token is None:
            raise DiscordSetupError("shards or max_concurrency is 'auto' but no token is configured")
        info = await fetch_gateway_bot(config.discord.api_url, token.get_secret_value(), timeout=timeout)
    concurrency = info.max_concurrency if config.max_concurrency == "auto" and info else config.max_concurrency
    assert isinstance(concurrency, int)
    if config.shards == "auto":
        assert info is not None
        shards = round_shard_count(info.shards, concurrency)
    else:
        shards = int(config.shards)
    per = config.shards_per_cluster
    return LayoutRecord(
        shard_count=shards, shards_per_cluster=per, cluster_count=-(-shards // per), max_concurrency=concurrency,
        identify_window=float(config.identify_window), lease_ttl=float(config.lease.ttl),
        lease_grace=float(config.lease.grace), heartbeat_interval=float(config.heartbeat_interval),
        allow_eval=config.allow_eval), info
