"""``python -m letsfrag`` is the ``letsfrag`` command."""

import sys

from .cli.main import main

sys.exit(main())
