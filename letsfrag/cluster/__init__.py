"""The cluster side of letsfrag: the discord.py subclasses a bot imports, and what they run on."""

from __future__ import annotations

from .client import ClusterMixin, ClusterShardBot, ClusterShardClient
from .context import ClusterContext

__all__ = ["ClusterContext", "ClusterMixin", "ClusterShardBot", "ClusterShardClient"]
