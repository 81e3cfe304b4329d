"""A rotating log file per cluster (``logs.dir/cluster-<id>.log``) that also remembers the last lines.

The supervisor pipes each cluster's stdout and stderr here as raw bytes. When the file would grow past
``max_bytes`` it is rotated (``.log`` -> ``.log.1`` -> ... -> ``.log.<backups>``, the oldest dropped), so a
process that floods its output costs bounded disk. The last lines of stderr (and of stdout, as a fallback)
are kept in memory for crash reports.

Secrets are masked (:func:`letsfrag.logs.mask`) line by line before they reach the file: a traceback may
quote the token, a Redis password or the signing secret. An unfinished line waits (per stream) for its end,
for the next supervisor note or for the close, or is written once it passes ``MAX_PENDING`` bytes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO

from letsfrag.logs import mask

__all__ = ["ClusterLog", "log_path"]

MAX_TAIL_LINE = 2000
#: an unfinished line longer than this is written without waiting for its end
MAX_PENDING = 64 * 1024


def _masked(data: bytes) -> bytes:
    text = data.decode("utf-8", "surrogateescape")
    masked = mask(text)
    return data if masked == text else masked.encode("utf-8", "surrogateescape")


def log_path(directory: str | Path, cluster_id: int) -> Path:
    """``<directory>/cluster-<id>.log``."""
    return Path(directory) / f"cluster-{cluster_id}.log"


class _LineTail:
    """The last ``size`` complete lines of a byte stream (plus the unfinished one)."""

    def __init__(self, size: int) -> None:
        self.lines: deque[str] = deque(maxlen=size)
        self._partial = b""

    def feed(self, data: bytes) -> None:
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        if len(self._partial) > MAX_TAIL_LINE * 4:
            self._partial = self._partial[-MAX_TAIL_LINE:]
        for raw in complete[-(self.lines.maxlen or 1):]:
            self.lines.append(raw[:MAX_TAIL_LINE].decode("utf-8", "replace").rstrip("\r"))

    def text(self) -> list[str]:
        lines = list(self.lines)
        if self._partial:
            lines.append(self._partial[:MAX_TAIL_LINE].decode("utf-8", "replace"))
        return lines

    def clear(self) -> None:
        self.lines.clear()
        self._partial = b""


class ClusterLog:
    """Append-only, size-rotated log of one cluster's output."""

    def __init__(self, path: str | Path, max_bytes: int, backups: int, tail_lines: int = 40) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, found {max_bytes!r}")
        if backups < 0:
            raise ValueError(f"backups cannot be negative, found {backups!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.rotations = 0
        self._stderr = _LineTail(tail_lines)
        self._stdout = _LineTail(tail_lines)
        self._file: BinaryIO | None = None
        self._size = 0
        self._pending = {False: b"", True: b""}  # unfinished line of stdout / stderr

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
            self._size = self._file.tell()
        return self._file

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.backups == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._open()

    def write(self, data: bytes, *, stderr: bool = False) -> None:
        """Append output of the cluster (complete lines, secrets masked; rotating as needed) and remember its
        last lines."""
        if not data:
            return
        (self._stderr if stderr else self._stdout).feed(data)
        data = self._pending[stderr] + data
        end = data.rfind(b"\n") + 1
        if len(data) - end > MAX_PENDING:
            end = len(data)
        self._pending[stderr] = data[end:]
        if end:
            self._append(_masked(data[:end]))

    def _flush_pending(self) -> None:
        for stream, data in self._pending.items():
            if data:
                self._pending[stream] = b""
                self._append(_masked(data))

    def _append(self, data: bytes) -> None:
        handle = self._open()
        view = memoryview(data)
        while view:
            room = self.max_bytes - self._size
            if room <= 0:
                self._rotate()
                handle = self._open()
                room = self.max_bytes
            chunk = view[:room]
            handle.write(chunk)
            self._size += len(chunk)
            view = view[len(chunk):]
        handle.flush()

    def note(self, text: str) -> None:
        """A line from the supervisor itself (``--- letsfrag: started pid 123 ...``)."""
        self._flush_pending()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data = f"--- letsfrag {stamp}: {text}\n".encode()
        handle = self._open()
        if self._size + len(data) > self.max_bytes and self._size > 0:
            self._rotate()
            handle = self._open()
        handle.write(data)
        handle.flush()
        self._size += len(data)

    def tail(self) -> list[str]:
        """The last stderr lines (the last stdout lines when stderr said nothing), secrets masked."""
        return [mask(line) for line in self._stderr.text() or self._stdout.text()]

    def reset_tail(self) -> None:
        """Forget remembered lines (a new process starts)."""
        self._stderr.clear()
        self._stdout.clear()

    def close(self) -> None:
        """Write what is left of unfinished lines and close the file."""
        with contextlib.suppress(OSError):
            self._flush_pending()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
