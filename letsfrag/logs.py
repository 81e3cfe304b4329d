"""Logging setup: rich on a terminal, plain or JSON lines otherwise; secrets are masked in every record."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never let ``value`` appear in a log line (tokens, passwords, signing secrets)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def mask(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class _SecretFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            message = record.getMessage()
            masked = mask(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        kind = getattr(record, "event_kind", None)
        if kind:
            data["event"] = kind
        if record.exc_info:
            data["exc"] = mask(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False)


def setup_logging(verbosity: int = 0, fmt: str = "auto", stream: Any = None) -> None:
    """Configure the root logger. ``verbosity``: -1 quiet (warnings), 0 info, 1+ debug.

    ``fmt``: ``auto`` (rich on a TTY, plain otherwise), ``rich``, ``plain`` or ``json``.
    """
    stream = stream or sys.stderr
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    if fmt == "auto":
        fmt = "rich" if getattr(stream, "isatty", lambda: False)() else "plain"
    handler: logging.Handler
    if fmt == "rich":
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(file=stream), show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(stream)
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
        else:
            formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
            formatter.converter = time.gmtime
            handler.setFormatter(formatter)
    handler.addFilter(_SecretFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # discord.py is chatty at INFO; keep it at WARNING unless debugging
    logging.getLogger("discord").setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
