"""One IPC line over the 1 MiB limit (a huge exception message) leaves the cluster healthy and its pipe working."""

from __future__ import annotations

import time
from pathlib import Path

import redis.asyncio as aioredis
from support.supervisor import grant, host_config, set_modes, starts, write_layout
from support.waiting import wait_until

from letsfrag.ipc import MAX_LINE
from letsfrag.supervisor import ClusterManager, ClusterState
from letsfrag.supervisor.logfile import log_path


async def test_a_2_mib_line_is_skipped_and_heartbeats_go_on(redis_url: str, r: aioredis.Redis,
                                                            tmp_path: Path) -> None:
    set_modes(tmp_path, default="huge_line")  # ready, one 2 MiB `error` line, then heartbeats every 0.1 s
    config = host_config(redis_url, tmp_path)  # hang_timeout 3 s
    await write_layout(r)
    await grant(r, 0, epoch=1)
    log_file = log_path(tmp_path / "logs", 0)
    async with ClusterManager(config) as manager:
        await wait_until(lambda: log_file.exists() and "skipped an IPC line" in log_file.read_text(),
                         timeout=15, message="the supervisor skipped the oversized line")
        skipped_at = time.time()
        note = next(line for line in log_file.read_text().splitlines() if "skipped an IPC line" in line)
        assert int(note.split("skipped an IPC line of ")[1].split()[0]) > 2 * 1024 * 1024 > MAX_LINE
        # heartbeats still arrive past the hang timeout: the channel survived the line
        hang_timeout = config.limits.hang_timeout
        await wait_until(lambda: (manager.clusters[0].last_heartbeat or 0) > skipped_at + hang_timeout + 0.5,
                         timeout=hang_timeout + 10, message="heartbeats after the oversized line")
        view = manager.clusters[0]
        assert view.state is ClusterState.READY, view.reason
        assert view.restarts == 0 and view.spawns == 1 and len(starts(tmp_path, 0)) == 1
