"""``letsfrag config check CONFIG`` (or ``-c CONFIG``): validate a config and print it with secrets masked."""

from __future__ import annotations

import argparse
import sys

from letsfrag.config import check_config_file


def run(args: argparse.Namespace) -> int:
    """Print the effective config (exit 0) or one line per problem (exit 2)."""
    code, text = check_config_file(args.config)
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code
