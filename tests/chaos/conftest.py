"""Fixtures for chaos tests: a real multi-process deployment (Redis, simulator, broker, supervisors)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from letsfrag.rehearsal import Rehearsal, RehearsalSettings


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
