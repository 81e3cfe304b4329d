"""Fixtures of the broker tests: fake hosts and brokers that are always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from broker_support import Deployment


@pytest.fixture
async def deployment(redis_url: str) -> AsyncIterator[Deployment]:
    dep = Deployment(redis_url)
    try:
        yield dep
    finally:
        await dep.close()
