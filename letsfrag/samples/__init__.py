"""The demo bot and the commented sample configs, shipped inside the package; ``letsfrag init`` copies them.

In a checkout ``bot.py`` and ``*.yaml`` here are symlinks to ``examples/bot.py`` and ``configs/*.yaml`` (one
copy of each); a wheel or sdist holds them as plain files, so ``letsfrag demo``, ``letsfrag run`` and
``letsfrag init`` work from an installed package without a checkout.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

#: the demo bot (``examples/bot.py`` in a checkout); as a module: ``letsfrag.samples.bot``
BOT = Path(__file__).parent / "bot.py"
#: the sample configs, in the order ``letsfrag init`` writes them
CONFIG_NAMES = ("broker.yaml", "host.yaml", "local.yaml")
#: what ``letsfrag run`` reads when no config is given, if it exists in the working directory
LOCAL_DEFAULT = Path("configs") / "local.yaml"


def sample_config(name: str) -> Path:
    """The packaged sample config ``name`` (one of :data:`CONFIG_NAMES`)."""
    if name not in CONFIG_NAMES:
        raise ValueError(f"no sample config {name!r}; choose one of {', '.join(CONFIG_NAMES)}")
    return Path(__file__).parent / name


def default_local_config() -> Path:
    """``configs/local.yaml`` of the working directory if there is one, else the packaged sample."""
    if LOCAL_DEFAULT.is_file():
        return LOCAL_DEFAULT
    log.info("no %s here: using the packaged sample %s (`letsfrag init` writes a copy to edit)",
             LOCAL_DEFAULT, sample_config("local.yaml"))
    return sample_config("local.yaml")


def write_samples(directory: Path, *, force: bool = False) -> list[Path]:
    """Copy every sample config into ``directory``; refuse (``ConfigError``) to overwrite unless ``force``."""
    targets = [directory / name for name in CONFIG_NAMES]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise ConfigError(f"init: would overwrite {', '.join(existing)}; nothing written (--force overwrites)")
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"init: {directory} is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    for target in targets:
        target.write_text(sample_config(target.name).read_text())
    return targets


def run_init(args: argparse.Namespace) -> int:
    """Entry point of ``letsfrag init [DIR] [--force]``: write the commented sample configs."""
    directory = Path(args.directory)
    for path in write_samples(directory, force=args.force):
        print(f"wrote {path}")
    local = directory / "local.yaml"
    print(f"next: `letsfrag config check {local}`, then `letsfrag run {local}` (set BOT_TOKEN for the real Discord)")
    return 0
