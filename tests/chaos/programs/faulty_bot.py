"""The example bot with one fault switched on for one cluster (a test program for the chaos suite).

Environment (set through the host config's ``bot.env``):

``CHAOS_FAULT``    ``crash`` (exit 1 after READY), ``crash_on_flag`` (exit 1 as soon as the flag appears, any
                   time after READY; the flag is consumed, so the restarted process behaves), ``hang`` (block
                   the event loop with ``time.sleep`` after READY) or ``memory`` (grow RSS by
                   ``CHAOS_MEMORY_STEP`` bytes every 0.1 s after READY)
``CHAOS_CLUSTER``  the cluster id the fault applies to (compared with ``LETSFRAG_CLUSTER_ID``)
``CHAOS_FLAG``     a file; the fault fires only while it exists. ``hang`` and ``memory`` delete it when they
                   fire, so the restarted process behaves; ``crash`` keeps firing until the test removes it.

The target cluster's process leaves ``on_ready-<pid>`` beside the flag when discord.py's ``on_ready`` has run
(with or without the fault): discord.py fires it after the shards' READY, so after the supervisor reports the
cluster READY; a test arms the flag only once the running process is past it (``support.chaos.wait_on_ready``),
else that process, not the restarted one, would take the fault.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "bot.py"

namespace = runpy.run_path(str(EXAMPLE), run_name="faulty_bot")
client = namespace["client"]
FAULT = os.environ.get("CHAOS_FAULT", "")
TARGET = os.environ.get("CHAOS_CLUSTER", "")
FLAG = Path(os.environ.get("CHAOS_FLAG", "/nonexistent"))
STEP = int(os.environ.get("CHAOS_MEMORY_STEP", str(16 * 1024 * 1024)))
hoard: list[bytes] = []
watchers: list[asyncio.Task[None]] = []


def _armed() -> bool:
    return bool(FAULT) and os.environ.get("LETSFRAG_CLUSTER_ID") == TARGET and FLAG.exists()


def _consume() -> None:
    try:
        FLAG.unlink()
    except FileNotFoundError:
        pass


async def _crash_when_flagged() -> None:
    while not await asyncio.to_thread(FLAG.exists):
        await asyncio.sleep(0.05)
    _consume()
    print(f"chaos: cluster {TARGET} crashes (flag)", file=sys.stderr, flush=True)
    os._exit(1)


async def _grow() -> None:
    while len(hoard) * STEP < 4 * 1024**3:
        hoard.append(os.urandom(1024) * (STEP // 1024))
        await asyncio.sleep(0.1)


@client.event
async def on_ready() -> None:
    if FAULT and os.environ.get("LETSFRAG_CLUSTER_ID") == TARGET:
        (FLAG.parent / f"on_ready-{os.getpid()}").touch()
    if FAULT == "crash_on_flag" and os.environ.get("LETSFRAG_CLUSTER_ID") == TARGET:
        if not watchers:  # on_ready may come again after a reconnect
            watchers.append(asyncio.get_running_loop().create_task(_crash_when_flagged()))
        return
    if not _armed():
        return
    print(f"chaos: cluster {TARGET} fault {FAULT}", file=sys.stderr, flush=True)
    if FAULT == "crash":
        os._exit(1)
    elif FAULT == "hang":
        _consume()
        time.sleep(3600)  # noqa: ASYNC251 - the fault: block the event loop, no more heartbeats
    elif FAULT == "memory":
        _consume()
        asyncio.get_running_loop().create_task(_grow())


if __name__ == "__main__":
    client.run()
