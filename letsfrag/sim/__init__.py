"""A simulated Discord (REST + gateway) for tests, the demo and benchmarks — and the referee of the rules.

An unmodified discord.py 2.7 client logs in to it after two assignments::

    discord.http.Route.BASE = sim.api_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sim.gateway_url)

``Simulator`` is imported lazily: the ``letsfrag`` command line reads :mod:`letsfrag.sim.cli`'s options for its
parser in every command (the broker, the supervisor), and the server pulls in aiohttp's web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from letsfrag.sim.options import SimulatorOptions

if TYPE_CHECKING:
    from letsfrag.sim.simulator import Simulator

__all__ = ["Simulator", "SimulatorOptions"]


def __getattr__(name: str) -> Any:
    if name == "Simulator":
        from letsfrag.sim.simulator import Simulator

        return Simulator
    raise AttributeError(f"module 'letsfrag.sim' has no attribute {name!r}")
