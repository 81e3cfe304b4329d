"""The operator's endpoint of a broker or a supervisor: Prometheus text on ``/metrics``, and two probes.

``metrics: {listen: 127.0.0.1:9464}`` in a broker or host config starts one small HTTP listener (aiohttp) beside
the process's own loops:

- ``GET /metrics`` — the Prometheus text format (``prometheus_client``), made fresh at each scrape from the
  process's own state and a few Redis reads (the source's :meth:`MetricsSource.refresh`);
- ``GET /healthz`` — 200 while the process's core loops run and Redis answers a PING, else 503
  (a liveness probe: restart me);
- ``GET /readyz`` — 200 when the process does its job (host: every cluster granted here is READY; broker: it is
  the leader or a standby in sync), else 503 (a readiness probe: don't count on me yet).

The probes answer a one-line text body saying why. Nothing here holds a secret: sources expose ids, states and
numbers only. Each process kind has its source: :class:`letsfrag.supervisor.supervisor_metrics.HostMetrics` and
:class:`letsfrag.broker.broker_metrics.BrokerMetrics`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from redis.exceptions import RedisError

from letsfrag.errors import ConfigError
from letsfrag.units import parse_listen

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["MetricsServer", "MetricsSource", "Probe", "bus_drops", "liveness", "redis_answers", "start_metrics"]

log = logging.getLogger(__name__)

#: how long a probe may wait for Redis before it says "unreachable"
PROBE_REDIS_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Probe:
    """The answer of a probe: ``ok`` decides 200/503, ``detail`` is the one-line body."""

    ok: bool
    detail: str


class MetricsSource(Protocol):
    """What a process offers its metrics listener."""

    #: the registry scraped on ``/metrics`` (the source registers its collectors in it)
    registry: CollectorRegistry

    async def refresh(self) -> None:
        """Read what a scrape shows (called before every ``/metrics``)."""

    async def health(self) -> Probe:
        """Liveness: the process's loops run and Redis answers."""

    async def readiness(self) -> Probe:
        """Readiness: the process does its job now."""


class Families:
    """A collector that yields the families its owner built at the last refresh, registered in its own
    :attr:`registry` (where the owner may register stateful metrics such as histograms too)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]

    def collect(self) -> Iterator[Metric]:
        yield from self.families

    def replace(self, families: Iterable[Metric]) -> None:
        self.families = list(families)


async def redis_answers(redis: object) -> Probe:
    """PING ``redis`` (an asyncio redis-py client) within :data:`PROBE_REDIS_TIMEOUT`."""
    try:
        async with asyncio.timeout(PROBE_REDIS_TIMEOUT):
            await redis.ping()  # type: ignore[attr-defined]
    except (RedisError, OSError, TimeoutError) as exc:
        return Probe(False, f"redis unreachable: {type(exc).__name__}")
    return Probe(True, "redis answers")


def bus_drops(dropped: Mapping[str, int]) -> Metric:
    """``letsfrag_bus_dropped_total{reason}`` from a bus's drop counters (both process kinds serve it)."""
    family = CounterMetricFamily("letsfrag_bus_dropped", "Bus messages dropped, by reason", labels=["reason"])
    for reason, count in sorted(dropped.items()):
        family.add_metric([reason], count)
    return family


async def liveness(dead_loops: list[str], redis: object) -> Probe:
    """``/healthz``: every core loop runs (``dead_loops`` names those that ended) and Redis answers."""
    if dead_loops:
        return Probe(False, f"loops not running: {', '.join(dead_loops)}")
    return await redis_answers(redis)


class MetricsServer:
    """The HTTP listener serving ``/metrics``, ``/healthz`` and ``/readyz`` for one :class:`MetricsSource`."""

    def __init__(self, listen: str, source: MetricsSource) -> None:
        self.host, self.requested_port = parse_listen(listen)
        self.source = source
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind and serve; ``port`` then holds the bound port (useful with port 0)."""
        from aiohttp import web  # only when metrics are on: a broker or supervisor starts faster without it

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.requested_port
        log.info("metrics and probes on http://%s:%d/metrics (/healthz, /readyz)", self.host, self.port)

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        try:
            await self.source.refresh()
        except Exception:  # a scrape shows what it has; the process goes on
            log.exception("metrics: refresh failed")
        body = generate_latest(self.source.registry)
        from aiohttp import web

        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return _probe_response(await self.source.health())

    async def _readyz(self, _request: web.Request) -> web.Response:
        return _probe_response(await self.source.readiness())


def _probe_response(probe: Probe) -> web.Response:
    from aiohttp import web

    return web.Response(status=200 if probe.ok else 503, text=probe.detail + "\n")


async def start_metrics(listen: str | None, make_source: Callable[[], MetricsSource]) -> MetricsServer | None:
    """Start a listener on ``listen`` for the source ``make_source()`` builds; None when ``listen`` is unset.

    A port already taken is an error naming the address (:class:`~letsfrag.errors.ConfigError`).
    """
    if listen is None:
        return None
    server = MetricsServer(listen, make_source())
    try:
        await server.start()
    except OSError as exc:
        await server.close()
        raise ConfigError(f"metrics.listen: cannot listen on {listen!r}: {exc.strerror or exc}") from None
    return server
