"""The pre-fork launcher: one process per supervisor that imports the heavy libraries once and forks clusters.

Started by the supervisor (:class:`letsfrag.supervisor.prefork.Launcher`) as ``python -m letsfrag.supervisor.launcher``
with one end of a ``SOCK_SEQPACKET`` socketpair as ``LETSFRAG_LAUNCHER_FD``. It imports :data:`PRELOAD`
(discord.py, aiohttp, redis-py, letsfrag's cluster side and config model; never the user's bot module) and builds
the validators of the config models a cluster uses (:data:`PREBUILD`; the others stay unbuilt) with the
garbage collector off, freezes the heap (``gc.freeze()``: the collector never writes to those
objects, so their pages stay shared copy-on-write; each cluster turns it on again) and then only answers
requests; it holds no event loop, no thread and no socket but the control socket. ``letsfrag supervise`` starts
it (:func:`start_launcher`) before its own imports, so both import at once.

A request (:class:`LaunchRequest`, one datagram) carries the bot module, the cluster's environment, its working
directory and the supervisor's pid, plus three descriptors (``SCM_RIGHTS``): the child's end of the IPC
socketpair and the write ends of its stdout and stderr pipes. The launcher double-forks: the middle process
exits at once, so the cluster process is reparented to the supervisor (a child subreaper), which waits for it
exactly like a child it spawned itself. The reply (:class:`LaunchReply`) carries the cluster's pid or an error.

The cluster process then does what an exec'd child gets from the supervisor's ``subprocess_exec``: parent-death
SIGTERM (set once its parent is the supervisor), its own session and process group, stdin from /dev/null,
stdout/stderr to the pipes, the IPC descriptor inheritable, the environment, the working directory (also
``sys.path[0]``, as ``python -m`` does) and default signal dispositions. Then it runs the bot module with
``runpy.run_module(module, run_name="__main__")``; the interpreter ends as ``python -m module`` would (the exit
code of ``SystemExit``, 1 and a traceback for an exception, atexit handlers run).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ENV_CONTROL_FD", "PREBUILD", "PRELOAD", "LaunchReply", "LaunchRequest", "fork_supported", "main",
           "start_launcher", "stop_launcher"]

ENV_CONTROL_FD = "LETSFRAG_LAUNCHER_FD"
#: imported once by the launcher, shared by every cluster process it forks
#: (``letsfrag.config``: a cluster reads its Redis settings into the config model, pydantic and all)
PRELOAD = ("asyncio", "aiohttp", "discord", "discord.ext.commands", "redis.asyncio", "letsfrag.cluster.client",
           "letsfrag.ipc", "letsfrag.rpc.caller", "letsfrag.config", "letsfrag.environment", "letsfrag.connection")
#: config models a cluster validates (``ClusterEnvironment.redis_settings``): the config models build their
#: validators on first use (``defer_build``), so the launcher builds these once for every cluster it forks
PREBUILD = (("letsfrag.config", "RedisSettings"),)
#: the largest request accepted (the environment of one cluster)
MAX_REQUEST = 1024 * 1024
#: descriptors per request: IPC, stdout, stderr
FDS = 3
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
#: the launcher's process name (``ps -o comm``, psutil's ``name()``); its clusters take the interpreter's back
NAME = "letsfrag-launch"
#: how long a new cluster process waits to be reparented to the supervisor
REPARENT_TIMEOUT = 5.0


@dataclass(frozen=True)
class LaunchRequest:
    """Start one cluster process running ``module``: the datagram the supervisor sends (its fds travel beside it)."""

    module: str
    env: dict[str, str]
    cwd: str | None
    supervisor: int

    def encode(self) -> bytes:
        return json.dumps({"module": self.module, "env": self.env, "cwd": self.cwd,
                           "supervisor": self.supervisor}).encode()

    @classmethod
    def decode(cls, data: bytes) -> LaunchRequest:
        """Parse a request; ``ValueError`` naming what is wrong."""
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"a launch request is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("a launch request must be a JSON object")
        module, env, cwd, supervisor = raw.get("module"), raw.get("env"), raw.get("cwd"), raw.get("supervisor")
        if not isinstance(module, str) or not module:
            raise ValueError("a launch request needs a module name")
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ValueError("a launch request needs env as an object of strings")
        if cwd is not None and not isinstance(cwd, str):
            raise ValueError("cwd of a launch request must be a string or null")
        if not isinstance(supervisor, int) or isinstance(supervisor, bool) or supervisor <= 0:
            raise ValueError("a launch request needs the supervisor's pid")
        return cls(module, env, cwd, supervisor)


@dataclass(frozen=True)
class LaunchReply:
    """The launcher's answer: the new cluster's pid, or why it could not be started."""

    pid: int = 0
    error: str = ""

    def encode(self) -> bytes:
        return json.dumps({"pid": self.pid, "error": self.error}).encode()

    @classmethod
    def decode(cls, data: bytes) -> LaunchReply:
        try:
            raw = json.loads(data)
            return cls(int(raw.get("pid") or 0), str(raw.get("error") or ""))
        except (ValueError, TypeError, AttributeError):
            return cls(0, f"the launcher sent an unreadable reply ({len(data)} bytes)")


def fork_supported() -> bool:
    """The pre-fork launcher needs Linux (subreaper, pidfd)."""
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open")


def start_launcher(env: Mapping[str, str] | None = None) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start ``python -m letsfrag.supervisor.launcher`` (the caller's end of its control socket
    beside it); it imports at once.

    This module imports only the standard library, so ``letsfrag supervise`` calls this before its own imports and
    the launcher's imports run beside them (:class:`letsfrag.supervisor.prefork.Launcher` adopts the pair).
    """
    from letsfrag.lifeline import parent_death_preexec  # standard library only

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    full = {**(os.environ if env is None else env), ENV_CONTROL_FD: str(theirs.fileno()), "PYTHONUNBUFFERED": "1"}
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "letsfrag.supervisor.launcher"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env=full, pass_fds=(theirs.fileno(),), start_new_session=True, preexec_fn=parent_death_preexec())
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, ours


def stop_launcher(process: subprocess.Popen[bytes], sock: socket.socket) -> None:
    """End a launcher nobody will use (its clusters, if any, are not touched) and reap it."""
    sock.close()
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


def _preload() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    _prebuild()


def _prebuild() -> None:
    """Build the validators of :data:`PREBUILD` now (in the launcher, so its clusters share them)."""
    for module, model in PREBUILD:
        getattr(importlib.import_module(module), model).model_rebuild()


def _prctl(option: int, value: Any) -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _set_parent_death_signal() -> None:
    _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _set_name(name: str) -> None:
    _prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))


def _become_cluster(request: LaunchRequest, fds: list[int], middle: int) -> None:
    """In the new cluster process: wait for the reparenting, then set up what ``subprocess_exec`` would."""
    deadline = time.monotonic() + REPARENT_TIMEOUT
    while os.getppid() == middle and time.monotonic() < deadline:
        time.sleep(0.0002)
    if os.getppid() != request.supervisor:  # the supervisor died meanwhile (or is no subreaper)
        os._exit(70)
    _set_parent_death_signal()
    if os.getppid() != request.supervisor:
        os.kill(os.getpid(), signal.SIGTERM)
    os.setsid()
    _set_name(os.path.basename(sys.executable))  # as an exec'd cluster is named
    ipc_fd, out_fd, err_fd = fds
    devnull = os.open(os.devnull, os.O_RDONLY)
    for source, target in ((devnull, 0), (out_fd, 1), (err_fd, 2)):
        os.dup2(source, target)
    for fd in (devnull, out_fd, err_fd):
        if fd > 2:
            os.close(fd)
    os.set_inheritable(ipc_fd, True)
    from letsfrag.ipc import ENV_IPC_FD  # preloaded

    os.environ.clear()
    os.environ.update(request.env)
    os.environ[ENV_IPC_FD] = str(ipc_fd)
    if request.cwd:
        os.chdir(request.cwd)
    sys.path[0] = os.getcwd()
    for entry in reversed([p for p in request.env.get("PYTHONPATH", "").split(os.pathsep) if p]):
        if entry not in sys.path:
            sys.path.insert(1, entry)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = [""]
    gc.enable()  # the launcher's imports are frozen: the collector never visits (nor writes to) their pages


def _reply(sock: socket.socket, reply: LaunchReply) -> None:
    with contextlib.suppress(OSError):
        sock.send(reply.encode())


def _fork_cluster(sock: socket.socket, request: LaunchRequest, fds: list[int]) -> bool:
    """Double-fork; True in the new cluster process, False in the launcher (after replying)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    read_end, write_end = os.pipe()
    try:
        middle = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        _reply(sock, LaunchReply(error=f"fork failed: {exc}"))
        return False
    if middle == 0:  # the middle process: fork the cluster, report its pid, exit
        os.close(read_end)
        me = os.getpid()  # not os.getppid() in the cluster: this process may be gone by then
        try:
            pid = os.fork()
        except OSError:
            os._exit(1)
        if pid == 0:
            os.close(write_end)
            sock.close()
            _become_cluster(request, fds, me)
            return True
        os.write(write_end, str(pid).encode())
        os._exit(0)
    os.close(write_end)
    for fd in fds:
        os.close(fd)
    data = b""
    while chunk := os.read(read_end, 64):
        data += chunk
    os.close(read_end)
    os.waitpid(middle, 0)
    _reply(sock, LaunchReply(pid=int(data)) if data.isdigit() else LaunchReply(error="the fork of the cluster failed"))
    return False


def serve(sock: socket.socket) -> LaunchRequest | None:
    """Answer requests until the supervisor closes the socket (``None``); return the request in a forked cluster."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, FDS)
        except OSError:
            return None
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        try:
            if len(fds) != FDS:
                raise ValueError(f"a launch request needs {FDS} descriptors, found {len(fds)}")
            request = LaunchRequest.decode(data)
        except ValueError as exc:
            for fd in fds:
                os.close(fd)
            _reply(sock, LaunchReply(error=str(exc)))
            continue
        if _fork_cluster(sock, request, fds):
            return request


def main() -> Any:
    """The launcher process: preload, freeze, serve; in a forked cluster, run the bot module as ``__main__``."""
    raw = os.environ.pop(ENV_CONTROL_FD, "")
    if not raw.isdigit():
        sys.stderr.write(f"letsfrag.supervisor.launcher: {ENV_CONTROL_FD} is not set; it is started by the "
                         "supervisor\n")
        return 2
    sock = socket.socket(fileno=int(raw))
    _set_name(NAME)
    # no collection while importing (10 % of the imports' time) and none before the freeze: the import garbage
    # stays (shared, a few MiB), but freeing it would leave holes all over the shared heap that every cluster's
    # first allocations fill, copying those pages (measured: 2 MiB more PSS per cluster)
    gc.disable()
    _preload()
    gc.freeze()
    request = serve(sock)
    if request is None:
        return 0
    return runpy.run_module(request.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    result = main()
    if isinstance(result, int):
        sys.exit(result)
