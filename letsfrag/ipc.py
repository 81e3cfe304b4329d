"""The pipe between a supervisor and one cluster process: JSON lines over a UNIX socketpair.

The supervisor creates the pair (:func:`create_pair`), keeps one end and passes the other to the child as
``LETSFRAG_IPC_FD``. Messages are one JSON object per line with an ``op``:

child -> supervisor
    ``hello`` {pid, epoch}; ``heartbeat`` {ts, ready, shards: {id: status}, guilds, latency, rss, loop_lag};
    ``ready``; ``fatal`` {code, reason} (a fatal gateway close: do not restart); ``fenced`` {reason};
    ``error`` {text} (an unhandled exception, with traceback)
supervisor -> child
    ``stop`` {reason}: stop claiming, let the claims in flight finish, close the gateway sessions and exit 0;
    ``promote`` (to a handover successor, :mod:`letsfrag.contract.handover`): the switch happened, check ownership now

EOF on the child's side means the supervisor is gone: the child must exit at once. The child's end, opened with
:meth:`IpcChannel.from_env`, also starts the :mod:`letsfrag.orphan` watchdog, which kills the process when its
event loop is blocked and cannot see the EOF.

A line longer than :data:`MAX_LINE` bytes is dropped (with a warning and the channel's ``dropped`` count): the
reader skips to the next newline and the stream goes on, so one huge message cannot break the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from letsfrag import orphan
from letsfrag.environment import ClusterEnvironment
from letsfrag.errors import NotInClusterError

ENV_IPC_FD = "LETSFRAG_IPC_FD"
#: the longest line a reader accepts (bytes, newline excluded); longer ones are skipped
MAX_LINE = 1024 * 1024
#: bytes asked of the socket per read
READ_CHUNK = 64 * 1024

log = logging.getLogger(__name__)


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


class LineReader:
    """Splits a byte stream into lines of at most ``max_line`` bytes; a longer line is skipped and counted."""

    def __init__(self, max_line: int = MAX_LINE, on_drop: Callable[[int], None] | None = None) -> None:
        self.max_line = max_line
        #: lines skipped because they were too long
        self.dropped = 0
        self._on_drop = on_drop
        self._buffer = bytearray()
        self._skipping = 0  # bytes of the oversized line skipped so far (0: not skipping)

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines ``data`` finished (without their newline)."""
        lines: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            piece = data[start:end]
            start = end + 1
            if self._skipping:
                self._drop(self._skipping + len(piece))
            elif len(self._buffer) + len(piece) > self.max_line:
                self._drop(len(self._buffer) + len(piece))
            else:
                lines.append(bytes(self._buffer) + piece)
            self._buffer.clear()
        rest = data[start:]
        if self._skipping:
            self._skipping += len(rest)
        elif len(self._buffer) + len(rest) > self.max_line:
            self._skipping = len(self._buffer) + len(rest)
            self._buffer.clear()
        else:
            self._buffer += rest
        return lines

    def _drop(self, size: int) -> None:
        self._skipping = 0
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop(size)


class IpcChannel:
    """An asyncio JSON-lines channel over one end of the socketpair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self._lines = LineReader(MAX_LINE, on_drop or _warn_dropped)
        self._ready: list[bytes] = []

    @property
    def dropped(self) -> int:
        """Received lines skipped because they were longer than :data:`MAX_LINE`."""
        return self._lines.dropped

    @classmethod
    async def from_socket(cls, sock: socket.socket, on_drop: Callable[[int], None] | None = None) -> IpcChannel:
        """A channel over ``sock``; ``on_drop(size)`` is called for each oversized line skipped (default: a warning)."""
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer, on_drop)

    @classmethod
    async def from_env(cls, *, watch_parent: bool = True) -> IpcChannel | None:
        """The child's end, from ``LETSFRAG_IPC_FD``; ``None`` when not started by a supervisor.

        With ``watch_parent`` the :mod:`letsfrag.orphan` watchdog ends this process when the supervisor is gone
        and the event loop did not stop within :func:`letsfrag.orphan.grace_for` the lease TTL.
        """
        raw = os.environ.get(ENV_IPC_FD)
        if not raw or not raw.isdigit():
            return None
        try:
            sock = socket.socket(fileno=int(raw))
        except OSError:
            return None
        if watch_parent:
            try:
                lease_ttl: float | None = ClusterEnvironment.from_env().lease_ttl
            except NotInClusterError:
                lease_ttl = None
            orphan.watch(sock.fileno(), grace=orphan.grace_for(lease_ttl))
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
        """The next valid message, or ``None`` at EOF. Invalid and oversized lines are skipped."""
        while True:
            while self._ready:
                message = decode(self._ready.pop(0))
                if message is not None:
                    return message
            try:
                data = await self._reader.read(READ_CHUNK)
            except (ConnectionError, OSError):
                return None
            if not data:
                return None
            self._ready = self._lines.feed(data)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
            await self._writer.wait_closed()


def _warn_dropped(size: int) -> None:
    log.warning("IPC: skipped a line of %d bytes (longer than %d)", size, MAX_LINE)
