"""Cross-cluster RPC, the answering side: a registry of named async handlers and the request dispatcher.

Requests arrive on ``{ns}:cluster:{cid}`` and ``{ns}:broadcast`` (see :mod:`letsfrag.rpc` for the format).
``fetch`` resolves a dotted attribute path on the client with ``getattr`` only (no calls, no private names);
``eval`` runs only when this cluster allows it (``LETSFRAG_ALLOW_EVAL=1``) and messages are signed.
"""

from __future__ import annotations

import builtins
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from ..errors import LetsfragError
from ..protocol import Envelope, MessageType

RpcHandler = Callable[..., Awaitable[Any]]
H = TypeVar("H", bound=RpcHandler)

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class RpcRefused(LetsfragError):
    """A request this cluster will not serve (unknown handler, bad path, eval disabled)."""


def resolve_path(root: Any, path: str, *, length: bool = False) -> Any:
    """``root.a.b`` for ``path="a.b"`` with getattr only; ``len()`` of it when ``length``; JSON-friendly."""
    if not isinstance(path, str) or not path:
        raise RpcRefused("fetch needs a non-empty attribute path such as 'guilds' or 'user.name'")
    value = root
    for part in path.split("."):
        if not _NAME.fullmatch(part):
            raise RpcRefused(f"attribute path {path!r}: {part!r} is not a public attribute name")
        try:
            value = getattr(value, part)
        except AttributeError as exc:
            raise RpcRefused(f"attribute path {path!r}: no attribute {part!r}") from exc
    if callable(value) and not isinstance(value, type):
        raise RpcRefused(f"attribute path {path!r} names a method; only values can be fetched")
    if length:
        return len(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return value


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
                f"eval is disabled on cluster {self.cluster_id} (needs LETSFRAG_ALLOW_EVAL=1 and a signing secret)"
            )
        if not isinstance(code, str):
            raise RpcRefused("eval needs a string of Python source")
        import discord

        namespace = {"client": self.client, "discord": discord, "__builtins__": builtins}
        result = eval(compile(code, "<broadcast_eval>", "eval"), namespace)
        if inspect.isawaitable(result):
            result = await result
        return result
