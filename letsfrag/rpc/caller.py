"""Cross-cluster RPC, the calling side: usable inside a bot (``client.cluster``) and from any tool.

No strings of code travel by default: clusters register named async handlers
(``@client.cluster.handler("stats")``) and callers invoke them by name::

    async with RpcClient("redis://127.0.0.1:6379/0", namespace="letsfrag", secret=None) as rpc:
        value = await rpc.request(0, "stats")                  # one cluster: value, RemoteError or RequestTimeout
        results = await rpc.broadcast("stats", timeout=5)      # {cluster id: Result} for every cluster
        guilds = await rpc.fetch_client_values("guilds", length=True)

Wire format (``{ns}:cluster:{cid}`` for one cluster, ``{ns}:broadcast`` for all; replies by sender
``cluster:{cid}``): ``rpc`` {name, args, kwargs}; ``fetch`` {path, length}; ``eval`` {code}; ``ping`` {}.
A broadcast always returns one :class:`~letsfrag.bus.Result` per cluster of ``{ns}:layout`` — a value, an
error (type and message) or a timeout — within the deadline, never a hang.

``broadcast_eval`` evaluates Python source in every cluster. It is dangerous (whoever can publish on the bus
runs code in your bot) and therefore off unless the caller passes ``allow_eval=True``, a signing secret is
configured and the broker allows it (``allow_eval: true`` in its config, published as ``allow_eval`` in
``{ns}:layout``); each cluster additionally refuses unless its supervisor set ``LETSFRAG_ALLOW_EVAL=1`` (both
the broker's and the host's config allow it) and it has a secret.

``fetch_client_values`` reads only an allow-list of paths (``letsfrag.rpc.server.FETCHABLE``): counts and ids
such as ``guilds``, ``latencies``, ``shard_ids``, ``cluster.id``; nothing holding a token or secret.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from ..bus import Bus, Result
from ..contract.envelope import MessageType
from ..contract.records import ROUTING_FIELDS, LayoutRecord
from ..errors import BusError, LetsfragError, RecordError

if TYPE_CHECKING:
    from ..config import RedisSettings

__all__ = ["RpcCaller", "RpcClient", "cluster_node"]


def cluster_node(cluster_id: int) -> str:
    """The bus node id (reply sender) of a cluster."""
    return f"cluster:{cluster_id}"


class RpcCaller:
    """The calling half of the RPC over an existing :class:`~letsfrag.bus.Bus`."""

    def __init__(self, bus: Bus, *, allow_eval: bool = False, signing: bool | None = None) -> None:
        self.bus = bus
        self.allow_eval = allow_eval
        self._signing = bus.codec.signing if signing is None else signing
        self._layout: LayoutRecord | None = None

    async def layout(self, *, refresh: bool = False) -> LayoutRecord:
        """The deployment's layout (cached; ``refresh`` re-reads ``{ns}:layout``)."""
        if self._layout is None or refresh:
            raw: Any = await self.bus.redis.hgetall(self.bus.keys.layout)  # type: ignore[misc]
            key = self.bus.keys.layout
            try:
                self._layout = LayoutRecord.from_hash(raw, key=key, only=ROUTING_FIELDS)
            except RecordError as exc:
                raise BusError(
                    f"no usable layout: {exc}: is a broker running for namespace {self.bus.keys.ns!r}?"
                ) from exc
        return self._layout

    async def _expected(self) -> list[str]:
        layout = await self.layout(refresh=True)
        return [cluster_node(cid) for cid in layout.cluster_ids]

    @staticmethod
    def _by_cluster(results: dict[str, Result]) -> dict[int, Result]:
        out: dict[int, Result] = {}
        for name, result in results.items():
            try:
                out[int(name.rsplit(":", 1)[1])] = result
            except (IndexError, ValueError):
                continue
        return dict(sorted(out.items()))

    async def request(self, cluster_id: int, name: str, *args: Any, timeout: float = 5.0, **kwargs: Any) -> Any:
        """Call handler ``name`` on one cluster; return its value or raise ``RemoteError``/``RequestTimeout``."""
        payload = {"name": name, "args": list(args), "kwargs": kwargs}
        return await self.bus.request(self.bus.keys.cluster_inbox(cluster_id), MessageType.RPC, payload,
                                      target=cluster_node(cluster_id), timeout=timeout)

    async def broadcast(self, name: str, *args: Any, timeout: float = 5.0, **kwargs: Any) -> dict[int, Result]:
        """Call handler ``name`` on every cluster; one :class:`Result` per cluster (partial, never a hang)."""
        payload = {"name": name, "args": list(args), "kwargs": kwargs}
        return await self._broadcast(MessageType.RPC, payload, timeout)

    async def request_guild(self, guild_id: int, name: str, *args: Any, timeout: float = 5.0, **kwargs: Any) -> Any:
        """Call handler ``name`` on the cluster owning ``guild_id`` (its shard ``(guild_id >> 22) % shards``) in the
        live layout generation (read again each call: a reshard renumbers the clusters)."""
        layout = await self.layout(refresh=True)
        return await self.request(layout.cluster_of_guild(guild_id), name, *args, timeout=timeout, **kwargs)

    async def fetch_client_values(self, path: str, *, length: bool = False, timeout: float = 5.0) -> dict[int, Result]:
        """Gather ``client.<path>`` from every cluster, for the allow-listed paths of
        ``letsfrag.rpc.server.FETCHABLE`` (others come back as error results naming the path);
        ``length=True`` returns ``len()`` of the value (e.g. ``fetch_client_values("guilds", length=True)``)."""
        return await self._broadcast(MessageType.FETCH, {"path": path, "length": length}, timeout)

    async def broadcast_eval(self, code: str, *, timeout: float = 5.0) -> dict[int, Result]:
        """DANGEROUS, off by default: evaluate a Python expression in every cluster (see module docstring)."""
        if not self.allow_eval or not self._signing:
            raise LetsfragError(
                "broadcast_eval is disabled: it needs allow_eval (LETSFRAG_ALLOW_EVAL=1 in a cluster) and a signing "
                "secret, because it runs arbitrary code in every cluster"
            )
        if not (await self.layout(refresh=True)).allow_eval:
            raise LetsfragError(
                f"broadcast_eval is disabled: the broker of namespace {self.bus.keys.ns!r} does not allow it "
                "(`allow_eval: true` is needed in the broker config as well as in the host configs)"
            )
        return await self._broadcast(MessageType.EVAL, {"code": code}, timeout)

    async def ping(self, *, timeout: float = 2.0) -> dict[int, Result]:
        """Ask every cluster for a short status (id, shards, ready)."""
        return await self._broadcast(MessageType.PING, {}, timeout)

    async def _broadcast(self, kind: MessageType, payload: dict[str, Any], timeout: float) -> dict[int, Result]:
        expected = await self._expected()
        results = await self.bus.broadcast(self.bus.keys.broadcast, kind, payload, expected=expected,
                                           timeout=timeout)
        return self._by_cluster(results)


class RpcClient(RpcCaller):
    """The RPC from outside a bot: owns its own bus connection (node ``tool:{hostname}-{pid}``)."""

    def __init__(
        self,
        redis: RedisSettings | str,
        *,
        namespace: str = "letsfrag",
        secret: str | None = None,
        allow_eval: bool = False,
        node_id: str | None = None,
    ) -> None:
        node = node_id or f"tool:{socket.gethostname()}-{os.getpid()}"
        super().__init__(Bus(redis, node_id=node, namespace=namespace, secret=secret), allow_eval=allow_eval)

    async def start(self) -> None:
        """Connect (raises ``BusError`` when Redis is unreachable)."""
        await self.bus.start()

    async def close(self) -> None:
        """Disconnect."""
        await self.bus.close()

    async def __aenter__(self) -> RpcClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
