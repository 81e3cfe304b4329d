"""The pipe between a supervisor and one cluster process: JSON lines over a UNIX socketpair.

The supervisor creates the pair (:func:`create_pair`), keeps one end and passes the other to the child as
``LETSFRAG_IPC_FD``. Messages are one JSON object per line with an ``op``:

child -> supervisor
    ``hello`` {pid, epoch}; ``heartbeat`` {ts, ready, shards: {id: status}, guilds, latency, rss, loop_lag};
    ``ready``; ``fatal`` {code, reason} (a fatal gateway close: do not restart); ``fenced`` {reason};
    ``error`` {text} (an unhandled exception, with traceback)
supervisor -> child
    ``stop`` {reason}: close the gateway sessions and exit 0

EOF on the child's side means the supervisor is gone: the child must exit at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from typing import Any

ENV_IPC_FD = "LETSFRAG_IPC_FD"
MAX_LINE = 1024 * 1024


def encode(op: str, **fields: Any) -> bytes:
    """One message as a JSON line."""
    return (json.dumps({"op": op, **fields}, separators=(",", ":"), default=str) + "\n").encode()


def decode(line: bytes) -> dict[str, Any] | None:
    """Parse one line; ``None`` for anything that is not a JSON object with a string ``op``."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if isinstance(message, dict) and isinstance(message.get("op"), str):
        return message
    return None


def create_pair() -> tuple[socket.socket, socket.socket]:
    """``(supervisor_end, child_end)``; pass ``child_end.fileno()`` in ``pass_fds`` and close it after spawning."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child.set_inheritable(True)
    return parent, child


class IpcChannel:
    """An asyncio JSON-lines channel over one end of the socketpair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> IpcChannel:
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
        return cls(reader, writer)

    @classmethod
    async def from_env(cls) -> IpcChannel | None:
        """The child's end, from ``LETSFRAG_IPC_FD``; ``None`` when not started by a supervisor."""
        raw = os.environ.get(ENV_IPC_FD)
        if not raw or not raw.isdigit():
            return None
        try:
            sock = socket.socket(fileno=int(raw))
        except OSError:
            return None
        return await cls.from_socket(sock)

    async def send(self, op: str, **fields: Any) -> bool:
        """Send one message; ``False`` when the other side is gone."""
        try:
            async with self._lock:
                self._writer.write(encode(op, **fields))
                await self._writer.drain()
            return True
        except (ConnectionError, OSError, RuntimeError):
            return False

    async def receive(self) -> dict[str, Any] | None:
        """The next valid message, or ``None`` at EOF. Invalid lines are skipped."""
        while True:
            try:
                line = await self._reader.readline()
            except (ConnectionError, OSError, ValueError):
                return None
            if not line:
                return None
            message = decode(line)
            if message is not None:
                return message

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
            await self._writer.wait_closed()
