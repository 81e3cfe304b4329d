"""Logging setup, and the one secret registry every path to a log or to Redis goes through.

Secrets (bot token, Redis passwords, signing secret, secret-looking ``bot.env`` values) are registered once
with :func:`register_secret` / :func:`register_secrets_in`; :func:`mask` replaces them, and the password of
any ``scheme://user:password@host`` URL, by ``***``. Every log record (message, traceback, stack) is masked
by :class:`SecretFilter`; the supervisor's publisher, the cluster's health reporter, the event stream and the
cluster log files call :func:`mask` / :func:`mask_value` before writing. Plain and rich log lines also show
control characters of the message (a forged newline, a terminal escape) as escapes.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "SECRET_KEYS", "JsonFormatter", "escape_control", "json_text", "mask", "mask_urls", "mask_value", "register_secret",
    "register_secrets_in", "setup_logging", "url_password",
]

#: mapping keys whose string values are secrets (config keys, the cluster's Redis settings)
SECRET_KEYS = frozenset({"token", "password", "secret"})
#: shortest value taken as a secret (shorter ones would mask ordinary words)
MIN_SECRET = 4

_SECRETS: set[str] = set()
_ORDERED: tuple[str, ...] = ()  # longest first, so a secret containing another is masked whole
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^/@:\s]*:)([^/@\s]+)(@)", re.IGNORECASE)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def register_secret(value: str | None) -> None:
    """Never let ``value`` appear in a log line or in Redis (tokens, passwords, signing secrets)."""
    global _ORDERED
    if value and len(value) >= MIN_SECRET and value not in _SECRETS:
        _SECRETS.add(value)
        _ORDERED = tuple(sorted(_SECRETS, key=len, reverse=True))


def url_password(url: str) -> str | None:
    """The password of a ``scheme://user:password@host`` URL, else None."""
    match = _URL_PASSWORD.search(url)
    return match.group(2) if match else None


def register_secrets_in(value: Any, key: str | None = None) -> None:
    """Register every secret inside a config model or plain data.

    Secrets are ``SecretStr`` values, strings under a key named ``token``/``password``/``secret`` and the
    password of every URL. Models are walked through ``model_dump()``.
    """
    if hasattr(value, "get_secret_value"):
        register_secret(value.get_secret_value())
    elif hasattr(value, "model_dump"):
        register_secrets_in(value.model_dump())
    elif isinstance(value, Mapping):
        for name, item in value.items():
            register_secrets_in(item, str(name))
    elif isinstance(value, list | tuple):
        for item in value:
            register_secrets_in(item)
    elif isinstance(value, str):
        if key in SECRET_KEYS:
            register_secret(value)
        register_secret(url_password(value))


def mask_urls(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***\3", text) if "://" in text else text


def mask(text: str) -> str:
    """``text`` with every registered secret and every URL password replaced by ``***``."""
    for secret in _ORDERED:
        if secret in text:
            text = text.replace(secret, "***")
    return mask_urls(text)


def mask_value(value: Any) -> Any:
    """:func:`mask` applied to every string inside ``value`` (dicts, lists and tuples are copied)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Mapping):
        return {k: mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value(v) for v in value]
    return value


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape_control(text: str) -> str:
    """Control characters (newline, ESC, bidi overrides...) as visible escapes (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(_escape, text)


def json_text(value: Any, indent: int | None = None) -> str:
    """JSON with non-ASCII text as is, but every control character escaped (``json`` leaves C1 controls such as
    ``\\x9b`` and bidi overrides raw, and a terminal would act on them)."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)  # C0 controls inside strings are escaped already
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


_TRACEBACKS = logging.Formatter()


class SecretFilter(logging.Filter):
    """Masks the message, the traceback (``exc_info``) and the stack of every record it sees (add it to a handler
    that does not come from :func:`setup_logging`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


class _EscapingFormatter(logging.Formatter):
    """Plain and rich lines: control characters in the message are escaped, so one record is one line
    (the traceback that follows keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(record.message)
        return super().formatMessage(record)


#: fields every JSON log line of this process carries (host, broker, cluster, shards, epoch), see set_log_context
_CONTEXT: dict[str, str] = {}
#: the format setup_logging chose (``rich``, ``plain`` or ``json``)
_ACTIVE_FORMAT = "plain"


def set_log_context(**fields: object) -> None:
    """Add fields (``host="h0"``, ``cluster=3`` ...) to every JSON log line of this process; None removes one."""
    for name, value in fields.items():
        if value is None:
            _CONTEXT.pop(name, None)
        else:
            _CONTEXT[name] = str(value)


def active_log_format() -> str:
    """The format :func:`setup_logging` configured last (``plain`` before any)."""
    return _ACTIVE_FORMAT


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (+ exc), then the process's context fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        kind = getattr(record, "event_kind", None)
        if kind:
            data["event"] = kind
        for name, value in _CONTEXT.items():
            data.setdefault(name, value)
        if record.exc_info or record.exc_text:
            data["exc"] = mask(record.exc_text or self.formatException(record.exc_info))  # type: ignore[arg-type]
        return json_text(data)


def setup_logging(verbosity: int = 0, fmt: str = "auto", stream: Any = None) -> None:
    """Configure the root logger. ``verbosity``: -1 quiet (warnings), 0 info, 1+ debug.

    ``fmt``: ``auto`` (rich on a TTY, plain otherwise), ``rich``, ``plain`` or ``json``.
    """
    global _ACTIVE_FORMAT
    stream = stream or sys.stderr
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    if fmt == "auto":
        fmt = "rich" if getattr(stream, "isatty", lambda: False)() else "plain"
    _ACTIVE_FORMAT = fmt
    handler: logging.Handler
    if fmt == "rich":
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(file=stream), show_path=False, rich_tracebacks=False, markup=False)
        handler.setFormatter(_EscapingFormatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(stream)
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
        else:
            formatter = _EscapingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
            formatter.converter = time.gmtime
            handler.setFormatter(formatter)
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # discord.py is chatty at INFO; keep it at WARNING unless debugging
    logging.getLogger("discord").setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
