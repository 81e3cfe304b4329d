"""A lease renewal that Redis refuses (an ACL without a command it needs) is an error naming the refusal,
not a silent fence-and-respawn loop."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from support.supervisor import host_config, set_modes, write_layout
from support.waiting import wait_until

from letsfrag.redis_server import RedisServer
from letsfrag.supervisor import ClusterManager


async def test_a_refused_renewal_is_logged_as_an_error_once(redis_server: RedisServer, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        set_modes(tmp_path, default="well")
        await write_layout(r)
        async with ClusterManager(host_config(redis_server.url, tmp_path)) as manager:
            await wait_until(lambda: manager.agent is not None and manager.agent.renewals > 0, message="renewed")
            caplog.set_level(logging.DEBUG, logger="letsfrag.supervisor.host")
            await r.execute_command("ACL", "SETUSER", "default", "-time")  # the renewal measures the clock offset
            await wait_until(lambda: "Redis refused the lease renewal" in caplog.text, timeout=10,
                             message="the refusal logged")
            first = manager.agent.renewals if manager.agent else 0
            await wait_until(lambda: caplog.text.count("lease renewal failed") >= 2, timeout=10,
                             message="further failures (at debug)")
            refusals = [rec for rec in caplog.records if "Redis refused the lease renewal" in rec.getMessage()]
            assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
            assert "no permissions" in refusals[0].getMessage() and "docs/security.md" in refusals[0].getMessage()
            assert manager.agent is not None and manager.agent.renewals == first
    finally:
        await r.execute_command("ACL", "SETUSER", "default", "+time")
        await r.aclose()
