"""One cluster process: spawn it, pump its output into its log, read its IPC pipe, stop it, leave nothing behind.

The process runs in its own session (process group = its pid) so signals reach its whole group; descendants
that left the group are remembered from psutil snapshots (taken at every sample and before every signal:
children lose their parent link once the middle process dies) and killed by pid. Everything this class
learns is pushed to ``sink`` as :class:`IpcMessage` / :class:`ProcessExited`; it decides nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import psutil

from letsfrag import ipc
from letsfrag.contract.ipc_ops import IpcOp
from letsfrag.supervisor.launch import parent_death_preexec
from letsfrag.supervisor.logfile import ClusterLog
from letsfrag.supervisor.state import IpcMessage, ProcessExited
from letsfrag.supervisor.watch import descendants

if TYPE_CHECKING:
    from letsfrag.supervisor.prefork import ForkedProcess, Launcher

__all__ = ["ClusterProcess", "run_stop"]

log = logging.getLogger(__name__)

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, ProcessLookupError, PermissionError)
#: how long the exit report waits for the output pipes to drain (a grandchild may hold them open)
DRAIN_TIMEOUT = 0.5


class ClusterProcess:
    """A running cluster process and the tasks that watch it."""

    def __init__(
        self,
        cluster_id: int,
        token: int,
        *,
        argv: list[str],
        env_for_fd: Callable[[int], dict[str, str]],
        cwd: str | None,
        log_file: ClusterLog,
        sink: Callable[[Any], None],
        launcher: Launcher | None = None,
        module: str | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.token = token
        self.argv = argv
        self._env_for_fd = env_for_fd
        self.cwd = cwd
        self.log = log_file
        self._sink = sink
        #: with a launcher, ``module`` is forked from it instead of ``argv`` being exec'd
        self._launcher = launcher
        self.module = module
        self.pid = 0
        self.returncode: int | None = None
        self.exited = asyncio.Event()
        self.channel: ipc.IpcChannel | None = None
        self._transport: asyncio.SubprocessTransport | ForkedProcess | None = None
        self._known: dict[int, psutil.Process] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._open_pipes = {1, 2}
        self._drained = asyncio.Event()
        self._exit_seen = False

    # start -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the process; raise ``OSError`` when it cannot be started (missing program, bad cwd...).

        Nothing is written to the log here: the caller records the process first, then notes its start.
        """
        loop = asyncio.get_running_loop()
        parent, child = ipc.create_pair()
        try:
            env = self._env_for_fd(child.fileno())
            if self._launcher is not None:
                assert self.module is not None
                transport: asyncio.SubprocessTransport | ForkedProcess = await self._launcher.spawn(
                    self.module, env, self.cwd, child.fileno(), _Protocol(self))
            else:
                transport, _ = await loop.subprocess_exec(
                    lambda: _Protocol(self),
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=self.cwd,
                    env=env,
                    pass_fds=(child.fileno(),),
                    start_new_session=True,
                    preexec_fn=parent_death_preexec(),
                )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._transport = transport
        self.pid = transport.get_pid()
        self.log.reset_tail()
        try:
            self.channel = await ipc.IpcChannel.from_socket(parent, on_drop=self._ipc_line_dropped)
        except BaseException:  # never leave a child nobody tracks
            self.kill_all()
            raise
        self._tasks = [asyncio.create_task(self._read_ipc(), name=f"c{self.cluster_id}-ipc")]
        if self._exit_seen:  # it ended before the channel was ready
            self._tasks.append(asyncio.create_task(self._report_exit()))

    def _output(self, fd: int, data: bytes) -> None:
        self.log.write(data, stderr=fd == 2)  # never raises: a full disk is counted, not fatal

    def _ipc_line_dropped(self, size: int) -> None:
        log.warning("cluster %d: skipped an IPC line of %d bytes (longer than %d)", self.cluster_id, size,
                    ipc.MAX_LINE)
        self.log.note(f"skipped an IPC line of {size} bytes (longer than {ipc.MAX_LINE})")

    def _pipe_closed(self, fd: int) -> None:
        self._open_pipes.discard(fd)
        if not self._open_pipes:
            self._drained.set()

    def _exited(self) -> None:
        self._exit_seen = True
        if self.channel is not None:
            self._tasks.append(asyncio.create_task(self._report_exit(), name=f"c{self.cluster_id}-exit"))

    async def _report_exit(self) -> None:
        """Report the exit once the output pipes drained (a grandchild may hold them: wait only briefly)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), DRAIN_TIMEOUT)
        self.returncode = self._transport.get_returncode() if self._transport is not None else None
        self.exited.set()
        self._sink(ProcessExited(self.cluster_id, self.token, self.returncode))

    async def _read_ipc(self) -> None:
        assert self.channel is not None
        while True:
            message = await self.channel.receive()
            if message is None:
                return
            self._sink(IpcMessage(self.cluster_id, self.token, message))

    @property
    def running(self) -> bool:
        """True until the main process was reaped."""
        return bool(self.pid) and not self._exit_seen

    # talking and signalling ----------------------------------------------------------------------------

    async def send(self, op: str, **fields: Any) -> bool:
        """Send one IPC message; False when the pipe is gone."""
        if self.channel is None:
            return False
        return await self.channel.send(op, **fields)

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the main process only (e.g. SIGUSR1 for a stack dump)."""
        if self._exit_seen or not self.pid:
            return False
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the process group (the main process and children that stayed in it)."""
        if not self.pid:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def remember(self, pids: Iterable[int]) -> None:
        """Record descendants seen by a sample, so they can be killed even after their parent died."""
        for pid in pids:
            if pid != self.pid and pid not in self._known:
                with contextlib.suppress(*_GONE):
                    self._known[pid] = psutil.Process(pid)

    def snapshot(self) -> None:
        """Take a snapshot of the process tree now (before signalling)."""
        if not self._exit_seen and self.pid:
            self.remember(descendants(self.pid))

    def kill_all(self) -> list[int]:
        """SIGKILL the group and every remembered descendant still alive; return the pids signalled."""
        self.snapshot()
        killed: list[int] = []
        if not self.exited.is_set():
            self.signal(signal.SIGKILL)
            killed.append(self.pid)
        self.signal_group(signal.SIGKILL)
        for pid, proc in list(self._known.items()):
            try:
                if proc.is_running():  # also guards against a recycled pid (create time differs)
                    proc.kill()
                    killed.append(pid)
            except _GONE:
                pass
        return killed

    def survivors(self) -> list[int]:
        """Remembered descendants (and the main process) still running."""
        alive: list[int] = []
        if not self._exit_seen and self.pid:
            alive.append(self.pid)
        for pid, proc in self._known.items():
            with contextlib.suppress(*_GONE):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        return alive

    # stopping -------------------------------------------------------------------------------------------

    async def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the main process to end; True if it did."""
        if self.exited.is_set():
            return True
        try:
            await asyncio.wait_for(self.exited.wait(), max(timeout, 0.0))
        except TimeoutError:
            return False
        return True

    async def stop(self, *, ask: bool, reason: str, stop_timeout: float) -> str:
        """The stop sequence; returns how it ended: ``asked``, ``terminated`` or ``killed``.

        IPC ``stop`` and wait ``stop_timeout / 2`` (when ``ask``); SIGTERM the group and wait ``stop_timeout``;
        SIGKILL the group and every known descendant. Leftovers are killed by :meth:`finish` in any case.
        """
        self.snapshot()
        if ask and await self.send(IpcOp.STOP, reason=reason) and await self.wait_exit(stop_timeout / 2):
            return "asked"
        self.snapshot()
        self.signal_group(signal.SIGTERM)
        if await self.wait_exit(stop_timeout):
            return "terminated"
        self.log.note(f"did not stop within {stop_timeout:g}s of SIGTERM; SIGKILL")
        self.kill_all()
        await self.wait_exit(5.0)
        return "killed"

    def finish(self) -> list[int]:
        """After the main process exited: kill every leftover of its tree, close the pipe; return those pids."""
        leftovers = [pid for pid in self.survivors() if pid != self.pid]
        self.kill_all()
        if self.channel is not None:
            channel, self.channel = self.channel, None
            self._tasks.append(asyncio.ensure_future(channel.close()))
        if self._transport is not None:
            self._transport.close()  # our ends of the pipes (a leftover may have held the other ends)
        return leftovers

    async def confirm_gone(self, timeout: float = 2.0) -> list[int]:
        """Wait until no remembered process is left; return the pids that survived ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            alive = self.survivors()
            if not alive or loop.time() >= deadline:
                return alive
            await asyncio.sleep(0.05)

    def cancel_tasks(self) -> None:
        """Stop watching (the supervisor is closing); the process itself is not touched."""
        for task in self._tasks:
            if not task.done():
                task.cancel()

async def run_stop(process: ClusterProcess, *, ask: bool, reason: str, stop_timeout: float) -> None:
    """The stop sequence of one process (:meth:`ClusterProcess.stop`); a failing sequence kills it."""
    try:
        how = await process.stop(ask=ask, reason=reason, stop_timeout=stop_timeout)
        log.debug("cluster %d stopped (%s)", process.cluster_id, how)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("cluster %d: stop sequence failed; killing it", process.cluster_id)
        process.kill_all()


class _Protocol(asyncio.SubprocessProtocol):
    """Output goes to the log as it arrives; the exit is noticed when the child is reaped, pipes or not."""

    def __init__(self, owner: ClusterProcess) -> None:
        self.owner = owner

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self.owner._output(fd, data if isinstance(data, bytes) else data.encode())

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.owner._pipe_closed(fd)

    def process_exited(self) -> None:
        self.owner._exited()
