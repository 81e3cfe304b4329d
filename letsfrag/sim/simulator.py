"""The :class:`Simulator`: a local Discord (REST + gateway) an unmodified discord.py client logs in to."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from letsfrag.clock import Clock
from letsfrag.sim import control_api, rest
from letsfrag.sim.background import Background
from letsfrag.sim.core import Routed, SimCore
from letsfrag.sim.gateway import gateway_handler
from letsfrag.sim.options import SimulatorOptions

log = logging.getLogger(__name__)


class Simulator:
    """A simulated Discord on ``options.host:options.port`` (port 0 picks a free one).

    Use ``async with Simulator(opts) as sim:`` or ``await sim.start()`` / ``await sim.close()``.
    Point discord.py at it with ``discord.http.Route.BASE = sim.api_url`` and
    ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sim.gateway_url)``.

    The control methods (``reconnect_shard``, ``dispatch``, ``send_ping``, ...) are synchronous: they
    change state and queue frames before returning, so two calls in a row cannot be separated by
    anything a client does.
    """

    def __init__(
        self, options: SimulatorOptions | None = None, /, *, clock: Clock | None = None, **kwargs: Any
    ) -> None:
        if options is not None and kwargs:
            options = options.replace(**kwargs)
        self.options = options if options is not None else SimulatorOptions(**kwargs)
        self.core = SimCore(self.options, clock=clock)
        self.background = Background(self.core)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # --- lifecycle --------------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[rest.api_middleware], client_max_size=16 * 1024 * 1024)
        app[rest.CORE_KEY] = self.core
        app[control_api.BACKGROUND_KEY] = self.background
        rest.add_routes(app)
        control_api.add_routes(app)
        app.router.add_get("/", gateway_handler)
        return app

    async def start(self) -> None:
        """Bind the port and start serving (idempotent)."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self._make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.options.host, self.options.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self._port = int(addresses[0][1]) if addresses else self.options.port
        self.core.gateway_url = self.gateway_url
        self.background.start()
        log.info("simulator listening on %s", self.base_url)

    async def close(self) -> None:
        """Stop background work, close every gateway connection and the HTTP server."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await self.background.close()
        for link in list(self.core.links):
            link.close(1001, "simulator shutting down")
        if self.core.links:
            await _wait_for(lambda: not self.core.links, timeout=2.0)
        await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- addresses --------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (after ``start()``)."""
        if self._port is None:
            raise RuntimeError("the simulator is not started; call await sim.start() first")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.options.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """``http://HOST:PORT/api/v10`` — the value for ``discord.http.Route.BASE``."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """``ws://HOST:PORT/`` — the value (as a ``yarl.URL``) for ``DiscordWebSocket.DEFAULT_GATEWAY``."""
        return f"ws://{self.options.host}:{self.port}/"

    # --- referee ----------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The same dict ``GET /_sim/stats`` returns (string keys for shard and bucket ids)."""
        return self.core.stats()

    def reset(self) -> None:
        """Zero the counters, like ``POST /_sim/reset``."""
        self.core.reset()

    # --- control ----------------------------------------------------------------------------------------
    # ``shard_count`` below: the shard count a shard id means (None = the sessions of that id of every count)
    def reconnect_shard(self, shard_id: int, shard_count: int | None = None) -> int:
        """Send RECONNECT (op 7) to the shard's live sessions; return how many got it."""
        return self.core.reconnect_shard(shard_id, shard_count)

    def invalidate_shard(self, shard_id: int, *, resumable: bool = False, shard_count: int | None = None) -> int:
        """Send INVALID_SESSION (op 9) to the shard's live sessions; return how many got it."""
        return self.core.invalidate_shard(shard_id, resumable=resumable, shard_count=shard_count)

    def drop_shard(self, shard_id: int, shard_count: int | None = None) -> int:
        """Cut the shard's connections without a close frame (clients RESUME); return how many."""
        return self.core.drop_shard(shard_id, shard_count)

    def dispatch(self, event: str, data: Any, *, guild_id: int | None = None, shard_id: int | None = None,
                 shard_count: int | None = None) -> Routed:
        """Send a dispatch to the sessions ``guild_id`` routes to (of every shard count in use), or of
        ``shard_id``."""
        return self.core.dispatch(event, data, guild_id=guild_id, shard_id=shard_id, shard_count=shard_count)

    def add_guilds(self, count: int) -> list[int]:
        """Create guilds and send GUILD_CREATE to the sessions they route to (a shard past
        ``max_guilds_per_shard`` is closed with 4011 instead); return the new ids."""
        return self.core.add_guilds(count)

    def send_ping(self, guild_id: int | None = None) -> int:
        """Send one ``!ping <n>`` (next guild in turn unless given); return ``n``."""
        return self.core.send_ping(guild_id)

    def send_join(self, guild_id: int | None = None) -> int:
        """A member ``joiner-<n>`` joins a guild (GUILD_MEMBER_ADD); return ``n``."""
        return self.core.send_join(guild_id)

    def start_traffic(self, rate: float, seconds: float | None = None, joins: float = 0.0) -> asyncio.Task[None]:
        """Traffic at ``rate`` events per second for ``seconds`` (None = until ``stop_traffic``): ``!ping``
        messages, and member joins for a ``joins`` share of them."""
        return self.background.start_traffic(rate, seconds, joins)

    def stop_traffic(self) -> int:
        """Stop every traffic run; return how many were running."""
        return self.background.stop_traffic()

    def start_chaos(self, seconds: float, rate: float) -> asyncio.Task[None]:
        """Random RECONNECT / INVALID_SESSION on random live shards for ``seconds`` at ``rate`` per second."""
        return self.background.start_chaos(seconds, rate)

    def guild_ids(self, shard_id: int | None = None, shard_count: int | None = None) -> list[int]:
        """Every guild id, or those of one shard (of ``shard_count`` shards, default the configured count)."""
        if shard_id is None:
            return list(self.core.world.guilds)
        return self.core.world.guild_ids_for_shard(shard_id, shard_count)

    def text_channel_id(self, guild_id: int) -> int:
        """The id of a guild's text channel."""
        return self.core.world.guilds[guild_id].text_channel_id


async def _wait_for(predicate: Any, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate() and loop.time() < deadline:
        await asyncio.sleep(0.02)
