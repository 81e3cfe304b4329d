"""``letsfrag logs [-c CONFIG] [--cluster N | --host H] [-f] [-n LINES]``: this host's cluster logs.

What ``pm2 logs`` and ``supervisorctl tail -f`` give: the last ``-n`` lines of each cluster's log file
(``logs.dir/cluster-<id>.log``, written by the supervisor, see :mod:`letsfrag.supervisor.logfile`), then with
``-f`` every new line as it is written, through rotations (``.log`` renamed to ``.log.1`` and a new ``.log``
started) and truncations. Several files are shown with a ``cluster-<id> |`` prefix.

Logs live on the machine that runs the cluster. Asked for a cluster whose file is not here, the command looks
up the assignment in Redis and names the host that runs it; asked for another host, it says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO, TextIO

from redis.exceptions import RedisError

from letsfrag.config import BrokerConfig, load_config_file
from letsfrag.contract.records import Grant
from letsfrag.errors import ConfigError, LetsfragError, RecordError
from letsfrag.supervisor.logfile import log_path

__all__ = ["LogFollower", "run"]

#: how often ``-f`` looks for new lines
POLL_INTERVAL = 0.2
_NAME = re.compile(r"cluster-(\d+)\.log")


class LogFollower:
    """One log path read from where it was left, followed through rotation and truncation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._inode: int | None = None
        self._partial = b""

    def last_lines(self, count: int) -> list[str]:
        """The last ``count`` complete lines now in the file (its rotated predecessor too if it is short);
        following then continues from the end."""
        lines: deque[str] = deque(maxlen=max(count, 0) or None)
        if count > 0:
            previous = self.path.with_name(self.path.name + ".1")
            for source in (previous, self.path):
                with contextlib.suppress(OSError), open(source, "rb") as handle:
                    for raw in handle:
                        lines.append(_text(raw))
        self._open(at_end=True)
        return list(lines)[-count:] if count > 0 else []

    def _open(self, *, at_end: bool) -> None:
        self.close()
        try:
            handle = open(self.path, "rb")
        except OSError:
            return
        if at_end:
            handle.seek(0, os.SEEK_END)
        self._file, self._inode = handle, os.fstat(handle.fileno()).st_ino

    def read_new(self) -> list[str]:
        """Complete lines written since the last call (a rotated file is read to its end, then the new one)."""
        lines: list[str] = []
        if self._file is None:
            self._open(at_end=False)
            if self._file is None:
                return lines
        lines += self._drain()
        try:
            stat = os.stat(self.path)
        except OSError:
            return lines  # rotated away and not recreated yet: keep the old handle
        if stat.st_ino != self._inode:
            self._open(at_end=False)
            lines += self._drain()
        elif self._file is not None and stat.st_size < self._file.tell():
            self._file.seek(0)
            self._partial = b""
            lines += self._drain()
        return lines

    def _drain(self) -> list[str]:
        assert self._file is not None
        data = self._partial + self._file.read()
        *complete, self._partial = data.split(b"\n")
        return [_text(raw) for raw in complete]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r\n")


def _cluster_files(directory: Path) -> dict[int, Path]:
    found = {}
    with contextlib.suppress(OSError):
        for path in directory.iterdir():
            match = _NAME.fullmatch(path.name)
            if match:
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def _where(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The log directory and this host's id, from ``--dir`` and/or the config."""
    host_id: str | None = None
    directory: str | None = args.dir
    if args.config:
        config = load_config_file(args.config)
        if isinstance(config, BrokerConfig):
            raise ConfigError(f"{args.config}: a broker config has no cluster logs; give a host or local config")
        host_id = config.host.id
        directory = directory or config.logs.dir  # relative: to the working directory, as for the supervisor
    if directory is None:
        raise ConfigError("letsfrag logs: give -c HOST_CONFIG (its logs.dir) or --dir DIRECTORY")
    return Path(directory), host_id


async def _owner(args: argparse.Namespace, cluster_id: int) -> str | None:
    """The host Redis says runs ``cluster_id`` (None: unknown, unassigned or no Redis given)."""
    if not (args.config or args.redis):
        return None
    from letsfrag.cli.connect import connection_from_args
    from letsfrag.connection import create_redis
    from letsfrag.contract.keys import Keys

    settings, namespace, _ = connection_from_args(args)
    redis = create_redis(settings, socket_timeout=3)
    try:
        raw = await redis.hget(Keys(namespace).assignment, str(cluster_id))  # type: ignore[misc]
    except (RedisError, OSError):
        return None
    finally:
        await redis.aclose()
    if not raw:
        return None
    try:
        return Grant.from_json(raw).host
    except RecordError:
        return None


def _select(args: argparse.Namespace, directory: Path, host_id: str | None) -> dict[int, Path]:
    if args.host is not None and host_id is not None and args.host != host_id:
        raise LetsfragError(f"host {args.host}'s logs are on that machine (this is host {host_id}); "
                            f"run `letsfrag logs` there")
    if args.cluster is not None:
        path = log_path(directory, args.cluster)
        if path.exists():
            return {args.cluster: path}
        owner = asyncio.run(_owner(args, args.cluster))
        if owner is not None and owner != host_id:
            raise LetsfragError(f"cluster {args.cluster} runs on host {owner}; its log is on that machine "
                                f"(run `letsfrag logs --cluster {args.cluster}` there)")
        raise LetsfragError(f"no log for cluster {args.cluster} in {directory}")
    files = _cluster_files(directory)
    if not files:
        raise LetsfragError(f"no cluster log files in {directory}")
    return files


def show(files: dict[int, Path], lines: int, follow: bool, out: TextIO, *, until: float | None = None) -> None:
    """Print the last ``lines`` of each file, then (``follow``) new lines until interrupted or ``until``."""
    prefix = len(files) > 1
    followers = {cid: LogFollower(path) for cid, path in files.items()}

    def emit(cid: int, text: str) -> None:
        out.write(f"cluster-{cid} | {text}\n" if prefix else f"{text}\n")

    for cid, follower in followers.items():
        for text in follower.last_lines(lines):
            emit(cid, text)
    out.flush()
    try:
        while follow and (until is None or time.monotonic() < until):
            time.sleep(POLL_INTERVAL)
            for cid, follower in followers.items():
                for text in follower.read_new():
                    emit(cid, text)
            out.flush()
    finally:
        for follower in followers.values():
            follower.close()


def run(args: argparse.Namespace) -> int:
    """The ``logs`` subcommand (see :data:`letsfrag.cli.main.HANDLERS`)."""
    if args.lines < 0:
        raise ConfigError(f"-n/--lines: expected a whole number >= 0, found {args.lines}")
    directory, host_id = _where(args)
    files = _select(args, directory, host_id)
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        show(files, args.lines, args.follow, sys.stdout)
    return 0
