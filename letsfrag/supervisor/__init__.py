"""The host supervisor: runs the clusters the broker granted to this host (``letsfrag supervise``).

``ClusterManager`` is imported lazily so that ``letsfrag.supervisor.policy`` (pure decisions) stays cheap to
import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from letsfrag.supervisor.manager import EVENT_NAMES, ClusterManager
    from letsfrag.supervisor.state import ClusterState, ClusterView

__all__ = ["EVENT_NAMES", "ClusterManager", "ClusterState", "ClusterView"]


def __getattr__(name: str) -> Any:
    if name in ("ClusterManager", "EVENT_NAMES"):
        from letsfrag.supervisor import manager

        return getattr(manager, name)
    if name in ("ClusterState", "ClusterView"):
        from letsfrag.supervisor import state

        return getattr(state, name)
    raise AttributeError(f"module 'letsfrag.supervisor' has no attribute {name!r}")
