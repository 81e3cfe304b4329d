"""letsfrag: run one discord.py bot across many processes and machines, coordinated through Redis.

``import letsfrag`` stays light: the discord.py subclasses and the RPC client load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ClusterShardBot", "ClusterShardClient", "RpcClient", "__version__"]

_LAZY = {
    "ClusterShardClient": "letsfrag.cluster.client",
    "ClusterShardBot": "letsfrag.cluster.client",
    "RpcClient": "letsfrag.rpc",
}

if TYPE_CHECKING:
    from .cluster.client import ClusterShardBot, ClusterShardClient
    from .rpc import RpcClient


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'letsfrag' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
