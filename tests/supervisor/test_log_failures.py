"""A cluster log that cannot be written (full disk, unusable path) never stops the supervisor or the cluster.

Chosen behaviour: the cluster keeps running with its log errors counted (status ``log_errors``, host record
``log_write_errors``, ``last_error``, a ``cluster_log_error`` event); its output is dropped. A full log disk is
a logging problem, not a reason to take shards offline.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis.asyncio as aioredis
from rich.console import Console
from support.supervisor import HOST, KEYS, gone, grant, host_config, set_modes, starts, status, write_layout
from support.waiting import wait_until

from letsfrag.cli.status import render
from letsfrag.events import recent
from letsfrag.snapshot.picture import read_snapshot
from letsfrag.supervisor import ClusterManager, ClusterState
from letsfrag.supervisor.logfile import ClusterLog, log_path


def test_a_full_disk_is_counted_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "cluster-0.log"
    path.symlink_to("/dev/full")
    cluster_log = ClusterLog(path, max_bytes=64, backups=1)
    cluster_log.note("started pid 1")
    cluster_log.write(b"line one\nline two\n" * 10, stderr=True)  # would rotate too
    assert cluster_log.write_errors == 2 and cluster_log.failing
    assert "No space left on device" in cluster_log.last_write_error
    assert cluster_log.tail()[-1] == "line two"  # the crash-report tail is kept in memory regardless
    # the disk has room again (here: the path is fixed): the next write reopens the file and works
    path.unlink()
    cluster_log.write(b"back\n")
    assert not cluster_log.failing and path.read_bytes() == b"back\n" and cluster_log.write_errors == 2


def _live_pids(tmp_path: Path, cluster_id: int) -> list[int]:
    return [s["pid"] for s in starts(tmp_path, cluster_id) if not gone(s["pid"])]


async def test_unwritable_logs_leave_every_cluster_running(redis_url: str, r: aioredis.Redis,
                                                           tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log_path(logs, 1).symlink_to("/dev/full")  # a full disk: every write fails with ENOSPC
    log_path(logs, 2).mkdir()                  # a log file that cannot even be opened
    set_modes(tmp_path, default="well", **{"1": "flood"})  # cluster 1 writes 1 MiB to stdout after READY
    config = host_config(redis_url, tmp_path, bot={"env": {
        "STUB_DIR": str(tmp_path / "stub"), "STUB_MODE_FILE": str(tmp_path / "stub" / "modes.json"),
        "STUB_FLOOD_MB": "1"}})
    await write_layout(r)
    for cid in (0, 1, 2):
        await grant(r, cid, epoch=1)
    async with ClusterManager(config) as manager:
        await wait_until(lambda: len(manager.clusters) == 3 and all(
            v.state is ClusterState.READY for v in manager.clusters.values()), timeout=20, message="all READY")

        async def counted() -> bool:
            published = [int((await status(r, cid)).get("log_errors") or 0) for cid in (1, 2)]
            return all(published) and manager.clusters[1].log_errors > 1  # the start note and the flood
        await wait_until(counted, timeout=10, message="log errors published for clusters 1 and 2")
        # they keep running: heartbeats past the hang timeout, one process each, never restarted
        since = time.time()
        hang_timeout = config.limits.hang_timeout
        await wait_until(lambda: all((v.last_heartbeat or 0) > since + hang_timeout + 0.5
                                     for v in manager.clusters.values()),
                         timeout=hang_timeout + 10, message="heartbeats go on")
        for cid, view in manager.clusters.items():
            assert view.state is ClusterState.READY and view.spawns == 1 and view.restarts == 0, (cid, view)
            assert _live_pids(tmp_path, cid) == [view.pid], cid
        assert manager.clusters[0].log_errors == 0 and "started pid" in log_path(logs, 0).read_text()
        one = await status(r, 1)
        assert "No space left on device" in one["last_error"] and one["state"] == "ready"
        assert "Is a directory" in (await status(r, 2))["last_error"]
        warnings = [e for e in await recent(r, KEYS) if e.kind == "cluster_log_error"]
        assert sorted(int(e.fields["cluster"]) for e in warnings) == [1, 2]  # once per streak, not per write

        async def host_counted() -> bool:
            total = await r.hget(KEYS.host(HOST), "log_write_errors")  # type: ignore[misc]
            return int(total or 0) >= manager.clusters[1].log_errors + manager.clusters[2].log_errors
        await wait_until(host_counted, timeout=10, message="the host record counts them")
        # `letsfrag status`: the count in --json, the reason in the table
        snapshot = await read_snapshot(r, KEYS)
        rows = {c.id: c for c in snapshot.clusters}
        assert rows[0].log_errors == 0 and rows[1].log_errors > 1 and rows[2].log_errors > 0
        assert rows[1].id in [c["id"] for c in snapshot.to_json()["clusters"] if c["log_errors"] > 1]
        console = Console(width=250, record=True)
        console.print(render(snapshot, redis_url))
        assert "cannot write its log: [Errno 28] No space left on device" in console.export_text()
