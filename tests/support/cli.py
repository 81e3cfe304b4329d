"""The ``letsfrag`` command in the test process: :func:`letsfrag.cli.main.main` (what ``python -m letsfrag`` runs: the
same parsing, handlers and error printing), for tests that check many command lines without a process each."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from letsfrag.cli.main import main


def main_in_process(argv: Sequence[str]) -> object:
    """The exit code of ``letsfrag ARGV`` run here (capture its output with ``capfd``).

    argparse's errors exit as the real command would (their code is returned); the root logger that the
    command configures (on the captured stderr) is put back afterwards.
    """
    root = logging.getLogger()
    handlers, level, discord_level = list(root.handlers), root.level, logging.getLogger("discord").level
    try:
        return main(list(argv))
    except SystemExit as exc:
        return exc.code
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("discord").setLevel(discord_level)
