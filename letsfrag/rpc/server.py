"""Cross-cluster RPC, the answering side: a registry of named async handlers and the request dispatcher.

Requests arrive on ``{ns}:cluster:{cid}`` and ``{ns}:broadcast`` (see :mod:`letsfrag.rpc.caller` for the format).
``fetch`` reads only the paths of :data:`FETCHABLE` (an allow-list: nothing that holds the bot token, the Redis
password, the signing secret or the environment is reachable), resolved with ``getattr`` only and returned as
JSON (discord objects as their ids); anything else is refused with an error reply naming the path. To expose
another value, register a handler. ``eval`` runs only when this cluster allows it (``LETSFRAG_ALLOW_EVAL=1``,
which its supervisor sets only when both the broker and the host config allow it) and messages are signed.
"""

from __future__ import annotations

import builtins
import inspect
import re
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, TypeVar

from ..contract.envelope import Envelope, MessageType
from ..errors import LetsfragError

RpcHandler = Callable[..., Awaitable[Any]]
H = TypeVar("H", bound=RpcHandler)

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

#: Every attribute path ``fetch`` may read on a cluster's client. Kept small on purpose: ``http``, ``ws``,
#: ``cluster.environment`` and the like hold the token, the Redis password and the signing secret.
FETCHABLE: frozenset[str] = frozenset({
    # discord.py's client (lists of objects come back as their ids; ``length=True`` gives counts)
    "guilds", "users", "emojis", "stickers", "private_channels", "cached_messages",
    "latency", "latencies", "shards", "shard_ids", "shard_count", "application_id", "status",
    "user", "user.id", "user.name", "user.display_name",
    # letsfrag's identity of this process
    "cluster.id", "cluster.shard_ids", "cluster.shard_count", "cluster.host_id", "cluster.epoch",
    "cluster.ready",
})
_PLAIN = (str, int, float, bool, type(None))


class RpcRefused(LetsfragError):
    """A request this cluster will not serve (unknown handler, bad path, eval disabled)."""


def plain(value: Any) -> Any:
    """``value`` as JSON: scalars as they are, enums as their value, objects with an ``id`` as that id,
    sequences and sets as lists, mappings with string keys; anything else as ``str()``."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, Sequence | AbstractSet):  # lists, tuples, sets, discord.py's SequenceProxy
        items = [plain(item) for item in value]
        unordered = isinstance(value, AbstractSet)
        return sorted(items) if unordered and all(isinstance(i, int) for i in items) else items
    ident = getattr(value, "id", None)
    if isinstance(ident, int) and not isinstance(ident, bool):
        return ident
    enum_value = getattr(value, "value", None)
    if isinstance(enum_value, str | int) and not isinstance(enum_value, bool):
        return enum_value
    return str(value)


def resolve_path(root: Any, path: str, *, length: bool = False, allowed: Collection[str] = FETCHABLE) -> Any:
    """``root.a.b`` for ``path="a.b"`` when ``path`` is in ``allowed``, with getattr only; ``len()`` of it when
    ``length``; JSON-friendly (see :func:`plain`). Raises :class:`RpcRefused` naming the path otherwise."""
    if not isinstance(path, str) or not path:
        raise RpcRefused("fetch needs a non-empty attribute path such as 'guilds' or 'user.name'")
    for part in path.split("."):
        if not _NAME.fullmatch(part):
            raise RpcRefused(f"attribute path {path!r}: {part!r} is not a public attribute name")
    if path not in allowed:
        raise RpcRefused(
            f"attribute path {path!r} is not fetchable; fetch reads only {', '.join(sorted(allowed))} "
            "(register an RPC handler to expose anything else)"
        )
    value = root
    for part in path.split("."):
        try:
            value = getattr(value, part)
        except AttributeError as exc:
            raise RpcRefused(f"attribute path {path!r}: no attribute {part!r}") from exc
    if callable(value) and not isinstance(value, type):
        raise RpcRefused(f"attribute path {path!r} names a method; only values can be fetched")
    if length:
        try:
            return len(value)
        except TypeError:
            raise RpcRefused(f"attribute path {path!r} has no length (fetch it without length=True)") from None
    return plain(value)


class RpcServer:
    """Handlers of one cluster and the bus handler that serves them."""

    def __init__(
        self,
        client: Any,
        cluster_id: int,
        *,
        allow_eval: bool = False,
        signing: bool = False,
        info: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.client = client
        self.cluster_id = cluster_id
        self.allow_eval = allow_eval and signing
        self._info = info or (lambda: {"cluster": cluster_id})
        self.handlers: dict[str, RpcHandler] = {}

    def handler(self, name: str | None = None) -> Callable[[H], H]:
        """Decorator registering an ``async def`` under ``name`` (default: the function's name)."""

        def register(func: H) -> H:
            key = name or func.__name__
            if not inspect.iscoroutinefunction(func):
                raise TypeError(f"RPC handler {key!r} must be an async function")
            self.handlers[key] = func
            return func  # type: ignore[return-value]

        return register

    async def on_envelope(self, env: Envelope) -> Any:
        """Serve one request; the return value is the reply (errors become error replies)."""
        payload = env.payload
        if env.type is MessageType.RPC:
            name = payload.get("name")
            func = self.handlers.get(name) if isinstance(name, str) else None
            if func is None:
                raise RpcRefused(f"cluster {self.cluster_id} has no RPC handler named {name!r}")
            args = payload.get("args") or []
            kwargs = payload.get("kwargs") or {}
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise RpcRefused("rpc args must be a list and kwargs an object")
            return await func(*args, **kwargs)
        if env.type is MessageType.FETCH:
            return resolve_path(self.client, payload.get("path", ""), length=bool(payload.get("length")))
        if env.type is MessageType.EVAL:
            return await self._eval(payload.get("code"))
        if env.type is MessageType.PING:
            return dict(self._info())
        raise RpcRefused(f"cluster {self.cluster_id} does not serve {env.type} requests")

    async def _eval(self, code: Any) -> Any:
        if not self.allow_eval:
            raise RpcRefused(
                f"eval is disabled on cluster {self.cluster_id}: it needs `allow_eval: true` in both the broker "
                "and the host config (LETSFRAG_ALLOW_EVAL=1) and a signing secret"
            )
        if not isinstance(code, str):
            raise RpcRefused("eval needs a string of Python source")
        import discord

        namespace = {"client": self.client, "discord": discord, "__builtins__": builtins}
        result = eval(compile(code, "<broadcast_eval>", "eval"), namespace)
        if inspect.isawaitable(result):
            result = await result
        return result
