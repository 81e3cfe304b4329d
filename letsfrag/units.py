"""Human durations (``500ms``, ``10s``, ``3m05s``, ``1h02m``) and sizes (``512MiB``, ``2Gi``), both ways.

Every duration :func:`format_duration` prints is read back by :func:`parse_duration` (to the printed
precision), and every size :func:`format_size` prints by :func:`parse_size`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: one ``number unit`` part of a duration; ``ms`` before ``m`` so ``500ms`` is not ``500m`` + ``s``
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_BARE_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|Ki|Mi|Gi|Ti|K|M|G|T)?", re.IGNORECASE)
_SIZE_FACTORS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
    "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_DURATION_HELP = "expected a duration like 500ms, 10s or 5m"
_SIZE_HELP = "expected a size like 512MiB or 2GiB"


def parse_duration(value: str | int | float) -> float:
    """Return seconds for ``500ms``, ``10s``, ``5m``, ``1h``, ``2d``, ``3m05s``, ``1h02m`` or bare seconds.

    Raises ``ValueError`` with the expected format when the text is not a finite, non-negative duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"{_DURATION_HELP}, found {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{_DURATION_HELP} (a finite number), found {value!r}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, found {value!r}")
        return float(value)
    text = str(value).strip()
    if _BARE_NUMBER.fullmatch(text):
        return float(text)
    total, position, units = 0.0, 0, []
    for match in _DURATION_PART.finditer(text):
        if text[position:match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_FACTORS[match.group(2)]
        units.append(match.group(2))
        position = match.end()
    ordered = [_DURATION_FACTORS[u] for u in units]
    if not units or text[position:].strip() or ordered != sorted(set(ordered), reverse=True):
        raise ValueError(f"{_DURATION_HELP}, found {value!r}")
    return total


def parse_size(value: str | int | float) -> int:
    """Return bytes for ``512MiB``, ``512Mi``, ``2GiB``, ``100MB``, ``1.5KiB`` or a bare number of bytes."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{_SIZE_HELP}, found {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, found {value!r}")
        return value
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError(f"{_SIZE_HELP}, found {value!r}")
    number, unit = match.groups()
    return int(float(number) * _SIZE_FACTORS[(unit or "b").lower()])


def format_duration(seconds: float) -> str:
    """Render seconds compactly for tables: ``850ms``, ``12s``, ``3m05s``, ``2h10m``, ``3d4h``.

    :func:`parse_duration` reads every result back (within the shown precision).
    """
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"


def format_shard_range(shard_ids: Sequence[int], empty: str = "") -> str:
    """Contiguous shards for people: ``"24–31"`` (en dash), ``"5"`` for one shard, ``empty`` for none."""
    if not shard_ids:
        return empty
    first, last = shard_ids[0], shard_ids[-1]
    return str(first) if first == last else f"{first}–{last}"


def format_size(size: float) -> str:
    """Render bytes compactly: ``512B``, ``1.5KiB``, ``88MiB``, ``2.0GiB`` (:func:`parse_size` reads them)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit in ("B", "MiB") else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}GiB"


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` / ``"[::1]:9464"`` / ``":9464"`` -> (host, port); ValueError naming the problem."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9464), found {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port 0-65535 after ':', found {port_text!r} in {value!r}")
    if any(c.isspace() for c in host):
        raise ValueError(f"expected a host name or address before ':', found {host!r}")
    return host, int(port_text)
