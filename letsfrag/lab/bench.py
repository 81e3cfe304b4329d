"""``letsfrag bench NAME``: run ``benchmarks/NAME.py`` from a checkout (same as ``python -m benchmarks.NAME``).

The benchmarks are not part of the wheel; an installed package says so and exits 2.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from ..errors import ConfigError

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_"))


def run(args: argparse.Namespace) -> int:
    """Run one benchmark module as ``__main__``."""
    if not BENCHMARKS.is_dir():
        raise ConfigError("bench: the benchmarks are not installed with the package; run `letsfrag bench` from a "
                          "checkout of letsfrag (a git clone or the unpacked sdist)")
    names = available()
    if args.name not in names:
        raise ConfigError(f"bench: unknown benchmark {args.name!r}; choose one of: {', '.join(names) or 'none'}")
    sys.path.insert(0, str(BENCHMARKS.parent))
    try:
        runpy.run_module(f"benchmarks.{args.name}", run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
