"""The last resort against orphaned cluster processes: a thread that ends the process once its supervisor is gone.

A cluster process learns of its supervisor's death twice on its event loop: the parent-death SIGTERM and EOF
on the IPC pipe. Both need a running loop; a loop blocked by a handler (``time.sleep``, a CPU-bound call)
sees neither, and the process would run forever with ppid 1. This thread does not need the loop: it waits
in ``poll()`` on a duplicate of the IPC socket for the peer's hang-up (nothing is read, every byte stays for
the loop) and checks the parent pid once a second. When the supervisor is gone it gives the process a grace
(:func:`grace_for`: :data:`GRACE` seconds, at most half the lease TTL) to end by itself (the graceful close),
then SIGKILLs the process group it leads (the cluster and the children that stayed in its group) or, when it
leads none, ``os._exit(70)``.

Half the lease TTL: the broker moves a dead host's clusters no earlier than ``ttl - heartbeat_interval +
lease.grace`` after the supervisor's death, and ``heartbeat_interval < ttl / 2``; so a hung orphan is gone
before the new owner of its shards can identify.

:class:`letsfrag.ipc.IpcChannel` starts it for the child's end (``IpcChannel.from_env``), so every cluster
program speaking the IPC protocol has it, whether it uses ``ClusterShardClient`` or not.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time

__all__ = ["GRACE", "POLL_INTERVAL", "grace_for", "parent_gone", "watch"]

#: the longest wait between noticing the supervisor's death and killing a process that did not end by itself
GRACE = 5.0
#: how often the parent pid is compared (the hang-up of the IPC socket is noticed at once)
POLL_INTERVAL = 1.0
#: ``os._exit`` code of a process that leads no process group (EX_SOFTWARE)
EXIT_CODE = 70

_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


def grace_for(lease_ttl: float | None) -> float:
    """:data:`GRACE`, or half the host lease TTL when that is shorter (``None``: TTL unknown)."""
    if lease_ttl is None or lease_ttl <= 0:
        return GRACE
    return min(GRACE, lease_ttl / 2)


def parent_gone(events: list[tuple[int, int]], parent: int, ppid: int) -> bool:
    """True when ``poll()`` reported a hang-up of the IPC socket or the parent pid is no longer ``parent``."""
    return any(mask & _HANGUP for _, mask in events) or ppid != parent


def _end_process() -> None:
    with contextlib.suppress(OSError):
        os.write(2, b"letsfrag: the supervisor is gone and this process did not end by itself "
                    b"(blocked event loop?); killing it\n")
    if os.getpgrp() == os.getpid():
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(EXIT_CODE)


def _run(fd: int, parent: int, grace: float, interval: float) -> None:
    poller = select.poll()
    poller.register(fd, _HANGUP)
    try:
        while not parent_gone(poller.poll(interval * 1000), parent, os.getppid()):
            pass
    finally:
        os.close(fd)
    time.sleep(grace)  # the graceful chance: a healthy loop closes its sessions and exits meanwhile
    _end_process()


def watch(ipc_fd: int, *, grace: float = GRACE, interval: float = POLL_INTERVAL) -> threading.Thread:
    """Start the watchdog for the child's end ``ipc_fd`` of the IPC socket (a daemon thread; the fd is duplicated).

    The supervisor is the current parent process.
    """
    if grace < 0 or interval <= 0:
        raise ValueError(f"grace must be >= 0 and interval > 0, found grace={grace!r}, interval={interval!r}")
    fd = os.dup(ipc_fd)  # not inheritable: a child of the cluster does not keep the socket open
    thread = threading.Thread(target=_run, args=(fd, os.getppid(), grace, interval), name="letsfrag-orphan-watch",
                              daemon=True)
    thread.start()
    return thread
