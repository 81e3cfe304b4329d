"""Shared fixtures: a throwaway redis-server per test (on a free port, stoppable and restartable), and a
factory of real multi-process deployments for the end-to-end and chaos tests."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from letsfrag.redis_server import RedisServer
from letsfrag.rehearsal import Rehearsal, RehearsalSettings


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server (no persistence) that is killed at teardown."""
    server = RedisServer(data_dir=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def rehearsal(tmp_path: Path) -> Iterator[Callable[..., Rehearsal]]:
    """Factory: ``rehearsal(hosts=2, ...)`` builds (not starts) a deployment that is always torn down."""
    made: list[Rehearsal] = []

    def factory(**settings: Any) -> Rehearsal:
        deployment = Rehearsal(RehearsalSettings(**settings), tmp_path / f"deployment-{len(made)}")
        made.append(deployment)
        return deployment

    yield factory
    for deployment in made:
        leftovers = deployment.close()
        assert leftovers == [], f"processes survived the graceful stop: {leftovers}"
