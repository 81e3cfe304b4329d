"""Children that die with their parent, whatever kills it (SIGKILL included).

Two mechanisms, because neither covers every case alone:

* :func:`parent_death_preexec` asks Linux (``prctl(PR_SET_PDEATHSIG)``) to signal the child when its parent
  dies. It works for programs that are not ours (``redis-server``), but only on Linux, and it fires when the
  *thread* that forked the child ends: spawn from a thread that outlives the child (the main thread).
* :class:`Lifeline` is a pipe whose write end only the parent holds. Our own children (``letsfrag …``) watch
  the read end (:func:`watch_lifeline`, called by the command line); the kernel closes the write end when the
  parent dies, the read returns end-of-file and the child SIGTERMs itself — any OS, any thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import stat
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
