"""The state directory of ``letsfrag run`` with ``redis: embedded`` (``embedded.dir``), private to its user.

A relative ``embedded.dir`` is taken relative to the working directory of ``letsfrag run`` (like ``logs.dir``
and ``bot.module``), never to the config file's folder: ``letsfrag run configs/local.yaml`` keeps its state in
``./.letsfrag``. The tools (``letsfrag status -c``, ``letsfrag-top -c``) resolve it the same way.

Layout (the directory and ``redis/`` are 0700, every file 0600)::

    lock        flock held by the owning ``letsfrag run`` and inherited by its redis-server; holds the run's pid
    redis.sock  the server's unix socket (no TCP listener unless ``embedded.port`` is set)
    redis.url   the URL clients use (with the password when a TCP port makes one necessary)
    secret      the per-run signing secret, when the config sets none
    redis/      the server's append-only file and log
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

import psutil

from ..config import LocalConfig
from ..errors import ConfigError

__all__ = ["MAX_SOCKET_PATH", "EmbeddedDir"]

#: longest unix socket path Linux accepts (``sun_path`` is 108 bytes with the terminating NUL)
MAX_SOCKET_PATH = 107
#: how long a new run waits for the lock of a dead run whose redis-server is still shutting down
ORPHAN_WAIT = 15.0


class EmbeddedDir:
    """The files of one ``embedded.dir`` (see module docstring); every path is absolute."""

    LOCK = "lock"
    SOCKET = "redis.sock"
    URL = "redis.url"
    SECRET = "secret"
    DATA = "redis"

    def __init__(self, path: str | Path, *, cwd: Path | None = None) -> None:
        folder = Path(path).expanduser()
        self.path = folder if folder.is_absolute() else (cwd or Path.cwd()) / folder

    @classmethod
    def of(cls, config: LocalConfig, *, cwd: Path | None = None) -> EmbeddedDir:
        """The directory of a local config's embedded server."""
        return cls(config.embedded.dir, cwd=cwd)

    @property
    def socket_path(self) -> Path:
        return self.path / self.SOCKET

    @property
    def data_dir(self) -> Path:
        return self.path / self.DATA

    @property
    def lock_path(self) -> Path:
        return self.path / self.LOCK

    def url(self, password: str | None = None) -> str:
        """The URL of the server's socket, with ``password`` when the server requires one."""
        return f"unix://{':' + password + '@' if password else ''}{self.socket_path}"

    # ----------------------------------------------------------------------------------------- owner side

    def prepare(self) -> None:
        """Create the directory and ``redis/`` with mode 0700 (tightening existing ones); ``ConfigError``
        if that is impossible or the socket path is too long for a unix socket."""
        length = len(os.fsencode(self.socket_path))
        if length > MAX_SOCKET_PATH:
            raise ConfigError(f"embedded.dir: the socket path {self.socket_path} is {length} bytes long, unix "
                              f"sockets allow {MAX_SOCKET_PATH}; choose a shorter embedded.dir")
        for folder in (self.path, self.data_dir):
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(folder, 0o700)
            except OSError as exc:
                raise ConfigError(f"embedded.dir: cannot create {folder} private to this user "
                                  f"({exc.strerror or exc})") from None

    def acquire(self, wait: float = ORPHAN_WAIT) -> int:
        """Take the directory's lock and return its fd (keep it open while the server runs).

        Raises ``ConfigError`` (exit 2) when another ``letsfrag run`` owns the directory, when a server left by
        a dead run still holds it after ``wait`` seconds, or when a server not started by letsfrag listens on
        the socket: never two writers of one append-only file.
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            deadline = time.monotonic() + wait
            while not _try_lock(fd):
                owner = _read_pid(fd)
                if owner is not None and _alive(owner):
                    raise ConfigError(f"embedded.dir: {self.path} is in use by another `letsfrag run` (pid "
                                      f"{owner}); stop it first or choose another embedded.dir")
                if time.monotonic() > deadline:
                    raise ConfigError(f"embedded.dir: {self.path} is still locked by a redis-server left behind "
                                      f"by a `letsfrag run` that died (pid {owner}); stop the process holding "
                                      f"{self.lock_path} first")
                time.sleep(0.1)
            if _answers(self.socket_path):
                raise ConfigError(f"embedded.dir: a server not started by this `letsfrag run` listens on "
                                  f"{self.socket_path}; stop it first or choose another embedded.dir")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write_private(self, name: str, text: str) -> Path:
        """Write ``<dir>/<name>`` readable only by this user (0600, also when it existed before)."""
        path = self.path / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            os.fchmod(fd, 0o600)
            handle.write(text)
        return path

    def clear(self) -> None:
        """Remove the URL and secret files (the server is gone)."""
        for name in (self.URL, self.SECRET):
            with contextlib.suppress(OSError):
                (self.path / name).unlink()

    # ----------------------------------------------------------------------------------------- tool side

    def read(self, name: str) -> str | None:
        """The stripped content of ``<dir>/<name>``, or None when it is missing, empty or unreadable."""
        try:
            return (self.path / name).read_text().strip() or None
        except OSError:
            return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _answers(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
