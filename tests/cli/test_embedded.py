"""The state directory of `letsfrag run` (embedded.dir): where it is, its modes, its lock, its server."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from support.waiting import scaled

from letsfrag.cli.embedded import MAX_SOCKET_PATH, EmbeddedDir
from letsfrag.cli.local import EmbeddedRedis
from letsfrag.config import load_local_config
from letsfrag.errors import ConfigError, LetsfragError
from letsfrag.lifeline import ENV_LIFELINE_FD, Lifeline, watch_lifeline
from letsfrag.redis_server import RedisServer

pytestmark = pytest.mark.integration


def local_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "conf" / "local.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text("redis: embedded\nshards: 2\nbot:\n  module: examples.bot\n  token: t\n" + extra)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_relative_dir_is_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_local_config(local_config(tmp_path, "embedded:\n  dir: state\n"), env={})
    monkeypatch.chdir(tmp_path)
    assert EmbeddedDir.of(config).path == tmp_path / "state"
    assert EmbeddedDir.of(config, cwd=Path("/srv")).path == Path("/srv/state")
    assert EmbeddedDir("/abs/dir", cwd=Path("/srv")).path == Path("/abs/dir")


def test_prepare_makes_the_folders_private_and_files_are_written_0600(tmp_path: Path) -> None:
    state = EmbeddedDir(tmp_path / "state")
    (tmp_path / "state").mkdir(mode=0o755)
    os.chmod(tmp_path / "state", 0o755)
    (tmp_path / "state" / "redis.url").write_text("old")
    os.chmod(tmp_path / "state" / "redis.url", 0o644)
    state.prepare()
    assert mode(state.path) == 0o700 and mode(state.data_dir) == 0o700
    written = state.write_private(EmbeddedDir.URL, "unix:///x\n")
    assert mode(written) == 0o600 and state.read(EmbeddedDir.URL) == "unix:///x"
    state.clear()
    assert state.read(EmbeddedDir.URL) is None


def test_a_socket_path_too_long_for_unix_sockets_is_a_config_error(tmp_path: Path) -> None:
    state = EmbeddedDir(tmp_path / ("d" * MAX_SOCKET_PATH))
    with pytest.raises(ConfigError, match=r"embedded.dir: the socket path .* bytes long, unix sockets allow 107"):
        state.prepare()


def test_the_lock_refuses_a_live_owner_and_waits_for_a_dead_owners_server(tmp_path: Path) -> None:
    state = EmbeddedDir(tmp_path / "state")
    state.prepare()
    fd = state.acquire()
    try:
        with pytest.raises(ConfigError, match=f"in use by another `letsfrag run` \\(pid {os.getpid()}\\)"):
            state.acquire(wait=0)
        # the owner dies, a server it started (holding the inherited lock) lives on
        holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                                  pass_fds=(fd,))
        os.pwrite(fd, b"999999999\n", 0)
    finally:
        os.close(fd)
    try:
        with pytest.raises(ConfigError, match=r"still locked by a redis-server left behind .*\(pid 999999999\)"):
            state.acquire(wait=0.2)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=scaled(10))
    fd = state.acquire(wait=0)
    assert os.pread(fd, 32, 0) == f"{os.getpid()}\n".encode()
    os.close(fd)


def test_a_foreign_server_on_the_socket_is_refused(tmp_path: Path) -> None:
    state = EmbeddedDir(tmp_path / "state")
    state.prepare()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(state.socket_path))
        listener.listen()
        with pytest.raises(ConfigError, match="a server not started by this `letsfrag run` listens on"):
            state.acquire(wait=0)


def test_embedded_redis_socket_only_or_tcp_with_a_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    server = EmbeddedRedis(load_local_config(local_config(tmp_path), env={}))
    server.start()
    try:
        assert server.url == f"unix://{tmp_path / '.letsfrag' / 'redis.sock'}"
        assert redis.Redis.from_url(server.url).ping()
        assert server.server is not None and server.server.process is not None
        with pytest.raises(ConfigError, match="in use by another"):
            EmbeddedRedis(load_local_config(local_config(tmp_path), env={})).start()
    finally:
        server.stop()
    assert not (tmp_path / ".letsfrag" / "redis.url").exists()

    from letsfrag.redis_server import free_port

    port = free_port()
    server = EmbeddedRedis(load_local_config(local_config(tmp_path, f"embedded:\n  port: {port}\n"), env={}))
    server.start()
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        assert redis.Redis.from_url(server.url).ping()
        assert server.url.startswith("unix://:") and mode(tmp_path / ".letsfrag" / "redis.url") == 0o600
    finally:
        server.stop()


def test_redis_server_start_failure_shows_its_own_reason(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path / "r", extra_args=["--no-such-option", "1"])
    with pytest.raises(LetsfragError, match=r"exited at start \(code 1\): .*Bad directive"):
        server.start()


def test_lifeline_child_stops_when_the_parent_closes_it() -> None:
    lifeline = Lifeline()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\n"
         "from letsfrag.lifeline import watch_lifeline\n"
         "print(watch_lifeline(), flush=True)\n"
         "time.sleep(60)\n"],
        env={**os.environ, **lifeline.env()}, pass_fds=lifeline.pass_fds(), stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "True\n"
        assert child.poll() is None  # alive while the lifeline is open
        lifeline.close()
        assert child.wait(timeout=scaled(10)) == -15
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_watch_lifeline_ignores_a_missing_or_foreign_fd(tmp_path: Path) -> None:
    assert watch_lifeline({}) is False
    assert watch_lifeline({ENV_LIFELINE_FD: "not-a-number"}) is False
    with open(tmp_path / "f", "w") as handle:  # a regular file, not the pipe: not ours to watch
        env = {ENV_LIFELINE_FD: str(handle.fileno())}
        assert watch_lifeline(env) is False and env == {}


def test_lifeline_guard_stops_a_foreign_program_when_the_lifeline_closes() -> None:
    lifeline = Lifeline()
    program = subprocess.Popen(["sleep", "60"])
    guard = lifeline.guard(program.pid)
    try:
        assert program.poll() is None and guard.poll() is None
        lifeline.close()  # what the kernel does when the owner dies, SIGKILL included
        assert program.wait(timeout=scaled(10)) == -15
        assert guard.wait(timeout=scaled(10)) == 0
    finally:
        for process in (program, guard):
            if process.poll() is None:
                process.kill()
                process.wait()
