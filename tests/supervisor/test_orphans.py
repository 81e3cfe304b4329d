"""The orphan watchdog (letsfrag/orphan.py): a cluster whose supervisor is gone ends even with a blocked loop."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.supervisor import gone
from support.waiting import scaled, wait_until_sync

from letsfrag import ipc, orphan

ORPHAN = Path(__file__).parent / "programs" / "orphan.py"
GRACE = 1.5


def _spawn(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    parent, child = ipc.create_pair()
    env = {**os.environ, ipc.ENV_IPC_FD: str(child.fileno()), "ORPHAN_MODE": mode, "ORPHAN_DIR": str(tmp_path),
           "ORPHAN_GRACE": str(GRACE)}
    proc = subprocess.Popen([sys.executable, str(ORPHAN)], env=env, pass_fds=(child.fileno(),),
                            start_new_session=True)
    child.close()
    parent.settimeout(scaled(20))
    assert b'"op":"hello"' in parent.recv(4096), "the program said hello"
    return proc, parent


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=scaled(timeout))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_a_blocked_loop_is_killed_after_the_grace(tmp_path: Path) -> None:
    proc, parent = _spawn(tmp_path, "blocked")
    wait_until_sync(lambda: (tmp_path / "child.pid").exists(), timeout=10, message="the child was started")
    grandchild = int((tmp_path / "child.pid").read_text())
    gone_at = time.monotonic()
    parent.close()  # the supervisor is gone (its end of the IPC socket closes with it)
    assert _wait(proc, timeout=GRACE + 10) == -signal.SIGKILL
    took = time.monotonic() - gone_at
    assert took >= GRACE, f"killed after {took:.2f}s, before the graceful chance of {GRACE}s was over"
    # the child in its process group went with it
    wait_until_sync(lambda: gone(grandchild), timeout=5, message="the program's child is gone too")


@pytest.mark.integration
def test_a_healthy_loop_closes_gracefully_first(tmp_path: Path) -> None:
    proc, parent = _spawn(tmp_path, "graceful")
    parent.close()
    assert _wait(proc, timeout=GRACE + 10) == 0, "the process ended by itself, not killed by the watchdog"
    assert (tmp_path / "closed").read_text() == "closed"


@pytest.mark.parametrize(("mask", "ppid", "expected"), [
    (0, 10, False),                # nothing happened (poll timed out)
    (select.POLLIN, 10, False),    # data for the event loop is not a hang-up
    (select.POLLHUP, 10, True),    # the supervisor's end closed
    (0, 1, True),                  # reparented: the supervisor died
])
def test_parent_gone_decision(mask: int, ppid: int, expected: bool) -> None:
    events = [(3, mask)] if mask else []
    assert orphan.parent_gone(events, parent=10, ppid=ppid) is expected


def test_the_grace_is_at_most_half_the_lease() -> None:
    assert orphan.grace_for(None) == orphan.GRACE == orphan.grace_for(60.0)
    assert orphan.grace_for(4.0) == 2.0
