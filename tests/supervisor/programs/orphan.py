"""A cluster stand-in for the orphan watchdog tests (letsfrag/orphan.py): its supervisor is the test itself.

``ORPHAN_MODE``:

graceful  on IPC EOF it takes 0.5 s to close (the event loop runs), writes ``$ORPHAN_DIR/closed`` and exits 0
blocked   starts a ``sleep`` child in its process group, writes ``$ORPHAN_DIR/child.pid``, then blocks its
          event loop with ``time.sleep`` (no EOF, no SIGTERM handler can run)

``ORPHAN_GRACE`` is the watchdog's grace (seconds).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from letsfrag import orphan
from letsfrag.ipc import ENV_IPC_FD, IpcChannel

DIR = Path(os.environ["ORPHAN_DIR"])


async def main() -> int:
    channel = await IpcChannel.from_env(watch_parent=False)
    assert channel is not None, "started without LETSFRAG_IPC_FD"
    orphan.watch(int(os.environ[ENV_IPC_FD]), grace=float(os.environ["ORPHAN_GRACE"]), interval=0.2)
    await channel.send("hello", pid=os.getpid())
    if os.environ["ORPHAN_MODE"] == "blocked":
        child = subprocess.Popen(["sleep", "3600"])  # noqa: ASYNC220 - the loop is about to be blocked anyway
        (DIR / "child.pid").write_text(str(child.pid))
        while True:
            time.sleep(0.05)  # noqa: ASYNC251 - on purpose: the event loop is blocked
    while await channel.receive() is not None:
        pass
    await asyncio.sleep(0.5)  # a graceful close that takes a while
    (DIR / "closed").write_text("closed")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
