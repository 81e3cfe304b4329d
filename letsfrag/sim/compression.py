"""Gateway transport compression: one stream per connection, each message flushed on its own."""

from __future__ import annotations

import zlib
from typing import Any, Protocol


class Compressor(Protocol):
    """Turns one outgoing JSON frame into what goes on the wire."""

    name: str | None

    def compress(self, frame: str) -> str | bytes:
        """Encode one frame; ``str`` goes out as a text message, ``bytes`` as a binary one."""


class Plain:
    """No transport compression: text frames."""

    name: str | None = None

    def compress(self, frame: str) -> str | bytes:
        return frame


class ZlibStream:
    """``compress=zlib-stream``: one ``compressobj`` per connection, every message ends in Z_SYNC_FLUSH."""

    name: str | None = "zlib-stream"

    def __init__(self) -> None:
        self._stream = zlib.compressobj()

    def compress(self, frame: str) -> str | bytes:
        return self._stream.compress(frame.encode()) + self._stream.flush(zlib.Z_SYNC_FLUSH)


class ZstdStream:
    """``compress=zstd-stream``: one zstd frame per connection, every message flushed as a block."""

    name: str | None = "zstd-stream"

    def __init__(self) -> None:
        import zstandard  # an optional dependency, imported only when a client asks for zstd

        self._flush_block: int = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        # a 128 KiB window and small tables: ~0.3 MiB per connection instead of ~0.8 MiB at level 3
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=17, hash_log=15, chain_log=15)
        self._stream: Any = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def compress(self, frame: str) -> str | bytes:
        data: bytes = self._stream.compress(frame.encode()) + self._stream.flush(self._flush_block)
        return data


def zstd_available() -> bool:
    """Whether the ``zstandard`` package is importable here."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def make_compressor(name: str | None) -> Compressor:
    """The compressor for the ``compress`` query parameter; ValueError names what is unsupported."""
    if not name:
        return Plain()
    if name == "zlib-stream":
        return ZlibStream()
    if name == "zstd-stream":
        if not zstd_available():
            raise ValueError("compress=zstd-stream needs the zstandard package in the simulator")
        return ZstdStream()
    raise ValueError(f"unsupported compress={name!r} (expected zlib-stream or zstd-stream)")
