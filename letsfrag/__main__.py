"""``python -m letsfrag`` is the ``letsfrag`` command."""

import sys

from .cli import main

sys.exit(main())
