"""``python -m letsfrag.sim``: run the simulated Discord."""

from __future__ import annotations

import sys

from letsfrag.lifeline import watch_lifeline
from letsfrag.sim.cli import main

if __name__ == "__main__":
    watch_lifeline()
    sys.exit(main())
