"""Children that die with their parent, whatever kills it (SIGKILL included).

Two mechanisms, because neither covers every case alone:

* :func:`parent_death_preexec` asks Linux (``prctl(PR_SET_PDEATHSIG)``) to signal the child when its parent
  dies. It works for programs that are not ours (``redis-server``), but only on Linux, and it fires when the
  *thread* that forked the child ends: spawn from a thread that outlives the child (the main thread).
* :class:`Lifeline` is a pipe whose write end only the parent holds. Our own children (``letsfrag …``) watch
  the read end (:func:`watch_lifeline`, called by the command line); the kernel closes the write end when the
  parent dies, the read returns end-of-file and the child SIGTERMs itself — any OS, any thread. For a program
  that is not ours, :meth:`Lifeline.guard` starts a tiny watchdog that does the same on its behalf.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["ENV_LIFELINE_FD", "Lifeline", "parent_death_preexec", "watch_lifeline"]

#: environment variable naming the inherited read end of the parent's lifeline pipe
ENV_LIFELINE_FD = "LETSFRAG_LIFELINE_FD"
#: how long a child whose parent died may take to stop after SIGTERM before it SIGKILLs itself
STOP_GRACE = 30.0
PR_SET_PDEATHSIG = 1


def parent_death_preexec(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when its parent dies (None elsewhere).

    If the parent already died between fork and exec, the child signals itself at once.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def _preexec() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), int(sig))

    return _preexec


class Lifeline:
    """The parent's side: a pipe whose read end children inherit (:meth:`env`, :meth:`pass_fds`)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()  # both non-inheritable: only ``pass_fds`` hands the read end on

    def env(self) -> dict[str, str]:
        """The environment entry telling a child which fd to watch."""
        return {ENV_LIFELINE_FD: str(self._read)}

    def pass_fds(self) -> tuple[int, ...]:
        """The fds to give ``subprocess.Popen(pass_fds=...)``."""
        return (self._read,)

    def guard(self, pid: int, grace: float = 10.0) -> subprocess.Popen[bytes]:
        """Start a watchdog that SIGTERMs ``pid`` (SIGKILL after ``grace`` seconds) when this lifeline closes.

        It runs ``python -I -S`` (no site packages: a few MB, milliseconds to start) in its own session; kill
        it before stopping ``pid`` on purpose.
        """
        return subprocess.Popen([sys.executable, "-I", "-S", "-c", _GUARD, str(self._read), str(pid), str(grace)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                pass_fds=self.pass_fds(), start_new_session=True)

    def close(self) -> None:
        """Close both ends (children watching it then stop, as if this process had died)."""
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


def watch_lifeline(environ: dict[str, str] | None = None) -> bool:
    """In a child: SIGTERM this process when the parent's lifeline closes; True if there was one to watch.

    Removes the variable from the environment so this process's own children do not watch a stale fd.
    """
    env = os.environ if environ is None else environ
    raw = env.pop(ENV_LIFELINE_FD, None)
    if raw is None:
        return False
    try:
        fd = int(raw)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
    except (ValueError, OSError):
        return False
    threading.Thread(target=_watch, args=(fd,), name="letsfrag-lifeline", daemon=True).start()
    return True


def _watch(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 1):
            pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_GRACE)
    os.kill(os.getpid(), signal.SIGKILL)


#: the watchdog of :meth:`Lifeline.guard`: wait for end-of-file on the lifeline, then stop the guarded pid
_GUARD = """
import os, select, signal, sys, time
fd, pid, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

def gone():
    try:
        os.kill(pid, 0)
    except OSError:
        return True
    try:  # a zombie nobody reaps (no init in a container) is gone too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False

while True:
    try:
        if select.select([fd], [], [], 1.0)[0] and not os.read(fd, 1):
            break
    except OSError:
        break
    if gone():  # the program ended on its own: nothing left to guard
        sys.exit(0)
deadline = time.monotonic() + grace
try:
    os.kill(pid, signal.SIGTERM)
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not gone():
        os.kill(pid, signal.SIGKILL)
except OSError:
    pass
"""
