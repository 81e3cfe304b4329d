"""A simulated Discord (REST + gateway) for tests, the demo and benchmarks — and the referee of the rules.

An unmodified discord.py 2.7 client logs in to it after two assignments::

    discord.http.Route.BASE = sim.api_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sim.gateway_url)
"""

from __future__ import annotations

from letsfrag.sim.options import SimulatorOptions
from letsfrag.sim.simulator import Simulator

__all__ = ["Simulator", "SimulatorOptions"]
