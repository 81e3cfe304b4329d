"""letsfrag: run one discord.py bot across many processes and machines, coordinated through Redis.

``import letsfrag`` stays light: the discord.py subclasses and the RPC client load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ClusterBroker",
    "ClusterManager",
    "ClusterShardBot",
    "ClusterShardClient",
    "LetsfragError",
    "RpcClient",
    "__version__",
]

_LAZY = {
    "ClusterBroker": "letsfrag.broker",
    "ClusterManager": "letsfrag.supervisor",
    "LetsfragError": "letsfrag.errors",
    "ClusterShardClient": "letsfrag.cluster.client",
    "ClusterShardBot": "letsfrag.cluster.client",
    "RpcClient": "letsfrag.rpc.caller",
}

if TYPE_CHECKING:
    from .broker import ClusterBroker
    from .cluster.client import ClusterShardBot, ClusterShardClient
    from .errors import LetsfragError
    from .rpc.caller import RpcClient
    from .supervisor import ClusterManager


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
