"""Cross-cluster RPC, one wire format: the calling side (:mod:`.caller`: ``RpcCaller`` inside a bot,
``RpcClient`` from any tool) and the answering side (:mod:`.server`: the handler registry and dispatcher a
cluster runs). Both stand on the bus and the envelope only, so the cluster imports them, never the reverse."""

from __future__ import annotations

from .caller import RpcClient

__all__ = ["RpcClient"]
