"""The supervisor's side of the pre-fork launcher (:mod:`.launcher`): start it, ask it for clusters, reap.

:class:`Launcher` makes the supervisor a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so the cluster
processes the launcher double-forks become the supervisor's own children: it waits for each with a pidfd and
``os.waitpid`` and gets the exact exit code or signal, as for a child it spawned itself. The launcher is started
on first use; when it dies it is started again (at once in the background, or at the next spawn at the latest);
the clusters it forked are not its children and keep running.

:class:`ForkedProcess` is the transport of one forked cluster: it reads the stdout/stderr pipes and notices the
exit, and drives the same :class:`asyncio.SubprocessProtocol` as an exec'd child's transport, so
:class:`letsfrag.supervisor.process.ClusterProcess` treats both alike.

Being a subreaper also makes the supervisor the new parent of orphaned descendants of its clusters (a child a
bot started and left behind); :meth:`Launcher.reap_strays` collects their exit status so no zombie stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import socket
import subprocess
from typing import Any

import psutil

from letsfrag.config import HostConfig
from letsfrag.supervisor.launcher import LaunchReply, LaunchRequest, fork_supported, start_launcher, stop_launcher

__all__ = ["ForkedProcess", "Launcher", "fork_supported", "launcher_mode", "set_child_subreaper"]

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
#: how long a spawn waits for the launcher's reply (its first request also waits for its imports)
REPLY_TIMEOUT = 60.0
#: delay before a launcher that died is started again in the background
RESTART_DELAY = 0.5


async def _wait_exit(process: subprocess.Popen[bytes]) -> int:
    """Wait for a child started with ``subprocess.Popen`` without blocking the loop (a pidfd); its exit code."""
    if process.poll() is not None:
        return process.returncode
    loop = asyncio.get_running_loop()
    fd = os.pidfd_open(process.pid)
    ended = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return process.wait()  # it ended: no wait


def launcher_mode(config: HostConfig) -> str:
    """``fork`` or ``exec``: ``bot.launcher``, else ``fork`` for ``bot.module`` (``exec`` where unsupported)."""
    if config.bot.command is not None:
        return "exec"
    mode = config.bot.launcher or "fork"
    if mode == "fork" and not fork_supported():
        log.warning("bot.launcher: fork needs Linux; using exec")
        return "exec"
    return mode


def set_child_subreaper(on: bool) -> bool:
    """Make this process a child subreaper (or stop being one); False when the kernel refused."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return bool(prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0)


class ForkedProcess:
    """A cluster process forked by the launcher: the subprocess-transport calls ``ClusterProcess`` uses."""

    def __init__(self, pid: int, protocol: asyncio.SubprocessProtocol) -> None:
        self._pid = pid
        self._protocol = protocol
        self._returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._pipes: list[asyncio.ReadTransport] = []
        self._pidfd = os.pidfd_open(pid)
        self._loop.add_reader(self._pidfd, self._check_exit)

    async def connect(self, stdout: int, stderr: int) -> None:
        """Read the two pipes (our read ends, owned from now on) into the protocol as fds 1 and 2."""
        for fd, raw in ((1, stdout), (2, stderr)):
            transport, _ = await self._loop.connect_read_pipe(lambda fd=fd: _Pipe(self._protocol, fd),  # type: ignore[misc]
                                                              os.fdopen(raw, "rb", buffering=0))
            self._pipes.append(transport)

    def _check_exit(self) -> None:
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:  # not our child after all (no subreaper): its status is lost
            log.warning("cluster pid %d: cannot wait for it (not a child of the supervisor)", self._pid)
            pid, status = self._pid, 255 << 8
        if pid == 0:
            return
        self._returncode = os.waitstatus_to_exitcode(status)
        self._stop_watching()
        self._protocol.process_exited()

    def _stop_watching(self) -> None:
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def get_pid(self) -> int:
        return self._pid

    def get_returncode(self) -> int | None:
        return self._returncode

    def close(self) -> None:
        """Close our ends of the pipes (the exit is still reaped when it comes)."""
        for pipe in self._pipes:
            pipe.close()


class _Pipe(asyncio.Protocol):
    def __init__(self, owner: asyncio.SubprocessProtocol, fd: int) -> None:
        self.owner, self.fd = owner, fd

    def data_received(self, data: bytes) -> None:
        self.owner.pipe_data_received(self.fd, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.pipe_connection_lost(self.fd, exc)


class Launcher:
    """One launcher process per supervisor; :meth:`spawn` forks a cluster process running ``module``.

    ``started``: a launcher :func:`.launcher.start_launcher` started before the supervisor's own imports
    (``letsfrag supervise`` does, so both import at once); it is adopted as the first launcher.
    """

    def __init__(self, *, env: dict[str, str] | None = None,
                 started: tuple[subprocess.Popen[bytes], socket.socket] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self._adopt = started
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._closing = False
        self._watcher: asyncio.Task[None] | None = None
        #: launchers started so far (1 after the first start; more after restarts)
        self.starts = 0
        self._zombies: set[int] = set()

    @property
    def pid(self) -> int | None:
        """The launcher's pid while it runs."""
        if self._process is None or self._process.returncode is not None:
            return None
        return self._process.pid

    async def start(self) -> None:
        """Start the launcher unless it runs (it imports while the caller goes on)."""
        async with self._lock:
            await self._ensure()

    async def _ensure(self) -> None:
        if self.pid is not None and self._sock is not None:
            return
        if not set_child_subreaper(True):
            if self._adopt is not None:
                stop_launcher(*self._adopt)
                self._adopt = None
            raise OSError("cannot make the supervisor a child subreaper (needed by bot.launcher: fork)")
        if self._adopt is not None:
            (process, ours), self._adopt = self._adopt, None
        else:
            process, ours = start_launcher(self._env)
        if self._sock is not None:
            self._sock.close()
        self._sock, self._process = ours, process
        ours.setblocking(False)
        self.starts += 1
        log.info("launcher started (pid %d)", process.pid)
        self._watcher = asyncio.create_task(self._watch(process), name="launcher-watch")

    async def _watch(self, process: subprocess.Popen[bytes]) -> None:
        code = await _wait_exit(process)
        if self._closing or process is not self._process:
            return
        log.warning("the launcher (pid %d) ended with %s; starting a new one (running clusters are not affected)",
                    process.pid, code)
        await asyncio.sleep(RESTART_DELAY)
        if not self._closing:
            with contextlib.suppress(OSError):
                await self.start()

    async def spawn(self, module: str, env: dict[str, str], cwd: str | None, ipc_fd: int,
                    protocol: asyncio.SubprocessProtocol) -> ForkedProcess:
        """Fork a cluster process running ``module`` (``ipc_fd``: the child's end, still ours to close).

        Raises ``OSError`` when the launcher cannot start it (the launcher's reason in the message).
        """
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        request = LaunchRequest(module=module, env=env, cwd=cwd, supervisor=os.getpid()).encode()
        try:
            async with self._lock:
                await self._ensure()
                assert self._sock is not None
                sock = self._sock
                try:
                    socket.send_fds(sock, [request], [ipc_fd, out_w, err_w])
                except OSError as exc:  # the launcher just died: one more try with a new one
                    log.warning("the launcher is gone (%s); starting a new one", exc)
                    await self._restart()
                    sock = self._sock
                    socket.send_fds(sock, [request], [ipc_fd, out_w, err_w])
                os.close(out_w)
                os.close(err_w)
                out_w = err_w = -1
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 65536), REPLY_TIMEOUT)
                except TimeoutError:
                    raise OSError(f"the launcher did not answer within {REPLY_TIMEOUT:g}s") from None
            reply = LaunchReply.decode(data) if data else LaunchReply(error="the launcher ended")
            if not reply.pid:
                raise OSError(reply.error or "the launcher could not start the cluster")
            process = ForkedProcess(reply.pid, protocol)
            await process.connect(out_r, err_r)
            out_r = err_r = -1
            return process
        finally:
            for fd in (out_r, out_w, err_r, err_w):
                if fd >= 0:
                    os.close(fd)

    async def _restart(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            self._spawn_reaper(process)
        await self._ensure()

    def _spawn_reaper(self, process: subprocess.Popen[bytes]) -> None:
        task = asyncio.ensure_future(_wait_exit(process))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def reap_strays(self, keep: set[int]) -> list[int]:
        """Reap zombie children not in ``keep`` that were zombies at the previous call too; return their pids.

        Orphaned descendants of clusters are reparented to the supervisor (a subreaper). Two calls apart: a
        process asyncio spawned is reaped by asyncio's own watcher at once, so it is never taken from it.
        """
        zombies: set[int] = set()
        if self._process is not None:  # reaped by its own watcher
            keep = keep | {self._process.pid}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children():
                with contextlib.suppress(psutil.Error):
                    if child.pid not in keep and child.status() == psutil.STATUS_ZOMBIE:
                        zombies.add(child.pid)
        reaped: list[int] = []
        for pid in zombies & self._zombies:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
        self._zombies = zombies - set(reaped)
        return reaped

    async def close(self) -> None:
        """End the launcher (closing its socket ends it) and stop being a subreaper; clusters are not touched."""
        self._closing = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._adopt is not None:  # adopted, never started
            stop_launcher(*self._adopt)
            self._adopt = None
        process = self._process
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(_wait_exit(process), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await _wait_exit(process)
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        set_child_subreaper(False)

    def describe(self) -> dict[str, Any]:
        """``{"pid", "starts"}`` for logs and tests."""
        return {"pid": self.pid, "starts": self.starts}
