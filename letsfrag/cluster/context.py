"""``client.cluster``: who this process is (cluster, shards, host, epoch) and the cross-cluster RPC."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..bus import Result
from ..environment import ClusterEnvironment
from ..errors import LetsfragError, NotInClusterError
from ..rpc.caller import RpcCaller
from ..rpc.server import H, RpcServer


class ClusterContext:
    """The ``cluster`` attribute of :class:`~letsfrag.ClusterShardClient` and :class:`~letsfrag.ClusterShardBot`.

    Identity (``id``, ``shard_ids``, ``shard_count``, ``host_id``, ``epoch``, ``ready``) is read from the
    supervisor's environment. ``handler`` registers RPC handlers (also before the client starts);
    ``request``/``broadcast``/``request_guild``/``fetch_client_values``/``broadcast_eval`` work once it runs.
    """

    def __init__(self, client: Any, environment: ClusterEnvironment | None, error: NotInClusterError | None) -> None:
        self._client = client
        self._env = environment
        self._error = error
        self.ready = False
        #: why the process ended (an ``ExitCode``), set when it stops, is fenced or hits a fatal close
        self.exit_code: int | None = None
        self.server = RpcServer(
            client,
            environment.cluster_id if environment else -1,
            allow_eval=bool(environment and environment.allow_eval),
            signing=bool(environment and environment.secret),
            info=self._info,
        )
        self.caller: RpcCaller | None = None

    @property
    def environment(self) -> ClusterEnvironment:
        """The supervisor's environment; raises ``NotInClusterError`` outside a supervisor."""
        if self._env is None:
            raise self._error or NotInClusterError("no letsfrag environment")
        return self._env

    @property
    def id(self) -> int:
        """This cluster's id."""
        return self.environment.cluster_id

    @property
    def shard_ids(self) -> tuple[int, ...]:
        """The shards this process runs."""
        return self.environment.shard_ids

    @property
    def shard_count(self) -> int:
        """The bot's total shard count."""
        return self.environment.shard_count

    @property
    def host_id(self) -> str:
        """The host (supervisor) running this process."""
        return self.environment.host_id

    @property
    def epoch(self) -> int:
        """The epoch of the grant this process runs under."""
        return self.environment.epoch

    def _info(self) -> dict[str, Any]:
        env = self._env
        return {"cluster": env.cluster_id if env else None, "shard_ids": list(env.shard_ids) if env else [],
                "ready": self.ready, "epoch": env.epoch if env else None}

    def handler(self, name: str | None = None) -> Callable[[H], H]:
        """Decorator: ``@client.cluster.handler("stats")`` on an ``async def`` makes it callable by name."""
        return self.server.handler(name)

    def _rpc(self) -> RpcCaller:
        if self.caller is None:
            raise LetsfragError("the cluster RPC is available once the client is running (after start())")
        return self.caller

    async def request(self, cluster_id: int, name: str, *args: Any, timeout: float = 5.0, **kwargs: Any) -> Any:
        """Call ``name`` on one cluster; its value, or ``RemoteError`` / ``RequestTimeout``."""
        return await self._rpc().request(cluster_id, name, *args, timeout=timeout, **kwargs)

    async def broadcast(self, name: str, *args: Any, timeout: float = 5.0, **kwargs: Any) -> dict[int, Result]:
        """Call ``name`` on every cluster; a :class:`~letsfrag.bus.Result` per cluster id."""
        return await self._rpc().broadcast(name, *args, timeout=timeout, **kwargs)

    async def request_guild(self, guild_id: int, name: str, *args: Any, timeout: float = 5.0, **kwargs: Any) -> Any:
        """Call ``name`` on the cluster owning ``guild_id``."""
        return await self._rpc().request_guild(guild_id, name, *args, timeout=timeout, **kwargs)

    async def fetch_client_values(self, path: str, *, length: bool = False, timeout: float = 5.0) -> dict[int, Result]:
        """``client.<path>`` from every cluster (getattr only; ``length=True`` for ``len()``)."""
        return await self._rpc().fetch_client_values(path, length=length, timeout=timeout)

    async def broadcast_eval(self, code: str, *, timeout: float = 5.0) -> dict[int, Result]:
        """DANGEROUS and off by default (needs ``LETSFRAG_ALLOW_EVAL=1`` and a secret): evaluate everywhere."""
        return await self._rpc().broadcast_eval(code, timeout=timeout)
