"""The stub, run as a module whose top-level code records the pid it runs in (``$STUB_DIR/toplevel.txt``), with
its parent, ``__name__``, ``LETSFRAG_RUN`` and ``LETSFRAG_DEAD_RUNS`` (``-`` when unset).

The pre-fork launcher must run this code in each cluster process, once, never in the launcher itself.
"""

import asyncio
import os
import sys
from pathlib import Path

with open(Path(os.environ["STUB_DIR"]) / "toplevel.txt", "a") as handle:
    handle.write(f"{os.getpid()} {os.getppid()} {__name__} {os.environ.get('LETSFRAG_RUN') or '-'} "
                 f"{os.environ.get('LETSFRAG_DEAD_RUNS') or '-'}\n")

if __name__ == "__main__":
    import stub

    sys.exit(asyncio.run(stub.main()))
