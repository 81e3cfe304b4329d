"""Checks of ``bot.cwd``, ``bot.command`` and ``bot.module`` that look at this machine without running the bot.

The config models stay free of file-system access; ``letsfrag config check`` runs these on top of them:
the working directory exists, the command is an executable file (relative to ``bot.cwd``) or on ``PATH``,
and the module can be found the way ``python -m module`` would find it from ``bot.cwd`` (parent packages are
located, never imported).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from letsfrag.config.models import BotSettings
from letsfrag.config.source import Loc

__all__ = ["program_problems"]


def program_problems(bot: BotSettings, base: Path | None = None,
                     environ: Mapping[str, str] | None = None) -> list[tuple[Loc, str]]:
    """``(key path, message)`` for every part of the bot program missing on this machine.

    ``base`` is the directory the supervisor runs in (default: the current one); ``environ`` its environment
    (default ``os.environ``), to which ``bot.env`` is added as the supervisor does.
    """
    base = Path.cwd() if base is None else base
    env = {**(os.environ if environ is None else environ), **bot.env}
    workdir = base / bot.cwd if bot.cwd else base
    if bot.cwd is not None and not workdir.is_dir():
        what = "is not a directory" if workdir.exists() else "does not exist"
        return [(("bot", "cwd"), f"the working directory {str(workdir)!r} {what}")]
    if bot.command:
        problem = _command_problem(bot.command[0], workdir, env.get("PATH", os.defpath))
        return [] if problem is None else [(("bot", "command"), problem)]
    if bot.module:
        problem = _module_problem(bot.module, workdir, env.get("PYTHONPATH", ""))
        return [] if problem is None else [(("bot", "module"), problem)]
    return []


def _command_problem(program: str, workdir: Path, path: str) -> str | None:
    if "/" in program:
        target = workdir / program
        if not target.is_file():
            return f"the program {program!r} does not exist (looked for {str(target)!r})"
        if not os.access(target, os.X_OK):
            return f"the program {program!r} is not executable (chmod +x {str(target)!r})"
        return None
    if shutil.which(program, path=path) is None:
        return f"the program {program!r} is not found on PATH"
    return None


def _module_problem(module: str, workdir: Path, pythonpath: str) -> str | None:
    """Locate ``module`` like ``python -m`` started in ``workdir`` would, importing nothing."""
    top, *rest = module.split(".")
    search = [str(workdir), *(p for p in pythonpath.split(os.pathsep) if p), *sys.path[1:]]
    spec = importlib.machinery.PathFinder.find_spec(top, search)
    if spec is None and top not in sys.builtin_module_names:
        spec = importlib.util.find_spec(top)  # editable installs and other meta-path finders
    missing = top
    for part in rest:
        if spec is None:
            break
        locations = spec.submodule_search_locations
        missing = f"{missing}.{part}"
        spec = importlib.machinery.PathFinder.find_spec(part, list(locations)) if locations else None
    if spec is None and module not in sys.builtin_module_names:
        return (f"the module {module!r} is not found from {str(workdir)!r} by {sys.executable} "
                f"(no {missing}; set bot.cwd to the directory holding it, or install it)")
    if spec is not None and spec.submodule_search_locations is not None:
        main = importlib.machinery.PathFinder.find_spec("__main__", list(spec.submodule_search_locations))
        if main is None:
            return f"the module {module!r} is a package without __main__.py; `python -m` cannot run it"
    return None
