"""letsfrag: run one discord.py bot across many processes and machines, coordinated through Redis."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
