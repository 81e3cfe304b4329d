"""Shared fixtures: a throwaway redis-server per test (on a free port, stoppable and restartable), and a
factory of real multi-process deployments for the end-to-end and chaos tests.

Test lanes: every test that starts a real process or server is marked ``integration``, so
``python -m pytest -m "not integration"`` is the fast lane. The mark is given here, without editing the test,
to every test under ``tests/chaos/`` and ``tests/e2e/`` and to every test whose fixtures include one of
:data:`INTEGRATION_FIXTURES` (directly or through another fixture); any other test that starts a process or a
server carries ``@pytest.mark.integration`` itself. :func:`_fast_lane_guard` fails an unmarked test that forks,
execs or listens on a socket, naming what to do, so the fast lane cannot silently grow slow.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import settings
from support.waiting import scaled, time_scale

from letsfrag.lab.rehearsal import Rehearsal, RehearsalSettings
from letsfrag.redis_server import RedisServer

TESTS = Path(__file__).parent
# no per-example deadline for the property tests: an example's wall time says nothing on a shared machine (an
# example of tests/contract/test_record_roundtrip.py took 270 ms beside a CPU hog); speed lives in benchmarks/
settings.register_profile("letsfrag", deadline=None)
settings.load_profile("letsfrag")
INTEGRATION_DIRS = frozenset({"chaos", "e2e"})
"""Folders of tests/ whose every test runs real processes."""
INTEGRATION_FIXTURES = frozenset({"redis_server", "rehearsal"})
"""Fixtures that start real servers or processes: a test using one (even through another fixture) is integration."""


def _starts_real_parts(item: pytest.Item) -> bool:
    if item.get_closest_marker("chaos") is not None:
        return True
    try:
        folder = Path(item.path).relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        folder = ""
    if folder in INTEGRATION_DIRS:
        return True
    return bool(INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """pytest-timeout's limit (``timeout`` in pyproject.toml) scales with the wait deadlines, unless given."""
    if getattr(config.option, "timeout", None) is None and config.getini("timeout"):
        config.option.timeout = float(config.getini("timeout")) * time_scale()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``integration`` what starts real parts (before ``-m`` deselects)."""
    for item in items:
        if item.get_closest_marker("integration") is None and _starts_real_parts(item):
            item.add_marker(pytest.mark.integration)


class _RealPartsSpy:
    """Counts forks, execs and listening sockets while installed (a fast-lane test must start none)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __enter__(self) -> _RealPartsSpy:
        import _posixsubprocess

        self._saved = (subprocess._fork_exec, _posixsubprocess.fork_exec, os.fork,  # type: ignore[attr-defined]
                       socket.socket.listen, subprocess._USE_POSIX_SPAWN)  # type: ignore[attr-defined]
        fork_exec, _, fork, listen, _ = self._saved

        def spy_fork_exec(*args: Any, **kwargs: Any) -> Any:
            self.seen.append("a subprocess")
            return fork_exec(*args, **kwargs)

        def spy_fork() -> int:
            self.seen.append("a fork")
            return fork()

        def spy_listen(sock: socket.socket, *args: Any) -> None:
            self.seen.append("a listening socket")
            listen(sock, *args)

        subprocess._fork_exec = spy_fork_exec  # type: ignore[attr-defined]
        _posixsubprocess.fork_exec = spy_fork_exec
        subprocess._USE_POSIX_SPAWN = False  # type: ignore[attr-defined]
        os.fork = spy_fork
        socket.socket.listen = spy_listen  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        import _posixsubprocess

        (subprocess._fork_exec, _posixsubprocess.fork_exec, os.fork,  # type: ignore[attr-defined]
         socket.socket.listen, subprocess._USE_POSIX_SPAWN) = self._saved  # type: ignore[attr-defined,method-assign]


@pytest.fixture(autouse=True)
def _fast_lane_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test outside the ``integration`` lane that starts a process or a server."""
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    with _RealPartsSpy() as spy:
        yield
    if spy.seen:
        pytest.fail(
            f"{request.node.nodeid} starts {', '.join(sorted(set(spy.seen)))} but is not marked integration: "
            "add @pytest.mark.integration (or use a fixture of INTEGRATION_FIXTURES in tests/conftest.py)",
            pytrace=False,
        )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server (no persistence) that is killed at teardown.

    SIGKILL, not SIGTERM: it keeps nothing, and redis-server acts on SIGTERM only at its next cron tick (up to
    100 ms at its default ``hz`` of 10), which every test using Redis paid at teardown."""
    server = RedisServer(data_dir=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's redis-server (decoded responses)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


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
        leftovers = deployment.close(timeout=scaled(15.0))
        assert leftovers == [], f"processes needed SIGKILL after the graceful stop: {leftovers}"
