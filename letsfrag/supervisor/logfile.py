"""A rotating log file per cluster (``logs.dir/cluster-<id>.log``) that also remembers the last lines.

The supervisor pipes each cluster's stdout and stderr here as raw bytes. When the file would grow past
``max_bytes`` it is rotated (``.log`` -> ``.log.1`` -> ... -> ``.log.<backups>``, the oldest dropped), so a
process that floods its output costs bounded disk. The last lines of stderr (and of stdout, as a fallback)
are kept in memory for crash reports.

Writing never raises: a full disk, a log that cannot be opened or a write error is counted
(:attr:`ClusterLog.write_errors`, :attr:`ClusterLog.last_write_error`), logged once per streak, and the data is
dropped; the next write tries again (reopening the file). The cluster keeps running and its output pipes keep
draining, so a logging problem never blocks a cluster or stops the supervisor.

Secrets are masked (:func:`letsfrag.logs.mask`) line by line before they reach the file: a traceback may
quote the token, a Redis password or the signing secret. An unfinished line waits (per stream) for its end,
for the next supervisor note or for the close, or is written once it passes ``MAX_PENDING`` bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO

from letsfrag.logs import mask

__all__ = ["ClusterLog", "log_path"]

log = logging.getLogger(__name__)

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
        #: writes (output chunks and notes) that failed and were dropped
        self.write_errors = 0
        #: the last write error (``""`` before any)
        self.last_write_error = ""
        #: True while the last write failed
        self.failing = False
        self._stderr = _LineTail(tail_lines)
        self._stdout = _LineTail(tail_lines)
        self._file: BinaryIO | None = None
        self._size = 0
        self._pending = {False: b"", True: b""}  # unfinished line of stdout / stderr

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)  # unbuffered: a failed write leaves nothing queued
            self._size = self._file.tell()
        return self._file

    def _put(self, handle: BinaryIO, data: memoryview) -> None:
        while data:
            written = handle.write(data)
            if not written:
                raise OSError(f"cannot write {self.path}: the write made no progress")
            self._size += written
            data = data[written:]

    def _failed(self, exc: OSError) -> None:
        self.write_errors += 1
        self.last_write_error = f"{type(exc).__name__}: {exc}" if not exc.strerror else \
            f"[Errno {exc.errno}] {exc.strerror}"
        if not self.failing:
            log.warning("cannot write the cluster log %s (%s); its output is dropped until writing works again",
                        self.path, self.last_write_error)
        self.failing = True
        self._close_file()  # the next write reopens the file (the disk may have room again, the path may be fixed)

    def _succeeded(self) -> None:
        if self.failing:
            log.info("writing the cluster log %s works again (%d writes were lost)", self.path, self.write_errors)
        self.failing = False

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
        last lines; never raises."""
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
        try:
            handle = self._open()
            view = memoryview(data)
            while view:
                room = self.max_bytes - self._size
                if room <= 0:
                    self._rotate()
                    handle = self._open()
                    room = self.max_bytes
                self._put(handle, view[:room])
                view = view[room:]
        except OSError as exc:
            self._failed(exc)
        else:
            self._succeeded()

    def note(self, text: str) -> None:
        """A line from the supervisor itself (``--- letsfrag: started pid 123 ...``); never raises."""
        self._flush_pending()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data = f"--- letsfrag {stamp}: {text}\n".encode()
        try:
            handle = self._open()
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._rotate()
                handle = self._open()
            self._put(handle, memoryview(data))
        except OSError as exc:
            self._failed(exc)
        else:
            self._succeeded()

    def tail(self) -> list[str]:
        """The last stderr lines (the last stdout lines when stderr said nothing), secrets masked."""
        return [mask(line) for line in self._stderr.text() or self._stdout.text()]

    def reset_tail(self) -> None:
        """Forget remembered lines (a new process starts)."""
        self._stderr.clear()
        self._stdout.clear()

    def close(self) -> None:
        """Write what is left of unfinished lines and close the file."""
        self._flush_pending()
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
