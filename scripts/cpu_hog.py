"""Run a command with the CPU oversubscribed: one busy loop per core beside it (the tests' busy-machine rehearsal).

    python scripts/cpu_hog.py -- python -m pytest tests/chaos
    python scripts/cpu_hog.py --factor 2 -- python -m pytest -m integration

``--factor F`` starts ``(F - 1) x cores`` busy processes, so the command competes for the CPU as if the machine
had ``1/F`` of its cores (default 2: the CPU oversubscribed twice). The busy loops are stopped when the command
ends (also on Ctrl-C); the exit status is the command's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys


def _spin() -> None:
    while True:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--factor", type=float, default=2.0,
                        help="CPU demand as a multiple of the cores (default 2: oversubscribed twice)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if args.factor < 1:
        parser.error(f"--factor: expected a number >= 1, got {args.factor}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(round((args.factor - 1) * cores))]
    for hog in hogs:
        hog.start()
    print(f"cpu_hog: {len(hogs)} busy loops beside the command on {cores} cores", file=sys.stderr)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.join()


if __name__ == "__main__":
    sys.exit(main())
