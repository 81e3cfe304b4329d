"""The example bot whose *successor* processes fail on demand (a test program for the handover tests).

A successor is a cluster process started with ``LETSFRAG_HANDOVER=1`` (:data:`letsfrag.contract.handover.HANDOVER_ENV`)
while the old process keeps serving. Environment (through the host config's ``bot.env``):

``CHAOS_CRASH_FLAG``  a file; while it exists, a successor exits with code 1 before it connects (P_new crashes
                      at start: the broker must roll the handover back)
``CHAOS_STALL_FLAG``  a file; while it exists, a successor logs in and keeps its heartbeats going but never opens
                      a gateway connection, so it is never READY (the handover deadline must roll it back)

A process started without ``LETSFRAG_HANDOVER=1`` (a first start, a failover) is the plain example bot.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
from pathlib import Path

from letsfrag.contract.handover import HANDOVER_ENV

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "bot.py"

SUCCESSOR = os.environ.get(HANDOVER_ENV) == "1"
CRASH = Path(os.environ.get("CHAOS_CRASH_FLAG", "/nonexistent"))
STALL = Path(os.environ.get("CHAOS_STALL_FLAG", "/nonexistent"))

if SUCCESSOR and CRASH.exists():
    print(f"chaos: successor of cluster {os.environ.get('LETSFRAG_CLUSTER_ID')} crashes at start",
          file=sys.stderr, flush=True)
    os._exit(1)

namespace = runpy.run_path(str(EXAMPLE), run_name="handover_bot")
client = namespace["client"]

if SUCCESSOR and STALL.exists():
    print(f"chaos: successor of cluster {os.environ.get('LETSFRAG_CLUSTER_ID')} never connects",
          file=sys.stderr, flush=True)

    async def _never_connect(*, reconnect: bool = True) -> None:
        await asyncio.Event().wait()

    client.connect = _never_connect  # discord.py's start() awaits self.connect() after the login

if __name__ == "__main__":
    client.run()
