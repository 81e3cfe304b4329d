"""``bot.launcher: fork``: clusters forked from the pre-loaded launcher behave as exec'd ones do.

Real processes: a ClusterManager in this test process (a child subreaper while its launcher runs), the launcher,
the stub cluster program run as a module, a real redis-server.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
import redis.asyncio as aioredis
from support.supervisor import grant, host_config, set_modes, write_layout
from support.waiting import wait_until

from letsfrag.cli.supervise_command import adopt_launcher
from letsfrag.supervisor import ClusterManager, ClusterState
from letsfrag.supervisor.launcher import start_launcher

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the launcher needs Linux")


def _ready(manager: ClusterManager, cids: list[int]) -> dict[int, int] | None:
    views = manager.clusters
    if all(cid in views and views[cid].state is ClusterState.READY and views[cid].pid for cid in cids):
        return {cid: views[cid].pid for cid in cids}  # type: ignore[misc]
    return None


async def test_a_killed_launcher_leaves_clusters_running_and_is_replaced(redis_url: str, r: aioredis.Redis,
                                                                          tmp_path: Path) -> None:
    set_modes(tmp_path, default="well")
    config = host_config(redis_url, tmp_path)
    await write_layout(r)
    async with ClusterManager(config) as manager:
        assert manager.launcher is not None
        await grant(r, 0, epoch=1)
        await grant(r, 1, epoch=1)
        pids = await wait_until(lambda: _ready(manager, [0, 1]), timeout=20, message="clusters ready")
        first = manager.launcher.pid
        assert first is not None and first not in pids.values()
        for pid in pids.values():  # reparented to the supervisor, which waits for it as for its own child
            assert psutil.Process(pid).ppid() == os.getpid()
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: manager.launcher.starts == 2 and manager.launcher.pid not in (None, first),
                         timeout=20, message="a new launcher")
        # the clusters did not notice: same processes, still READY, heartbeating
        beats = {cid: manager.clusters[cid].last_heartbeat for cid in pids}
        await wait_until(lambda: all((manager.clusters[c].last_heartbeat or 0) > (beats[c] or 0) for c in pids),
                         timeout=10, message="heartbeats after the launcher's death")
        assert _ready(manager, [0, 1]) == pids
        # the next spawn is served by the new launcher, the exit code of the old process is exact
        os.kill(pids[0], signal.SIGKILL)
        again = await wait_until(lambda: (v := _ready(manager, [0])) and v[0] != pids[0] and v, timeout=20,
                                 message="cluster 0 restarted")
        assert manager.clusters[0].restarts == 1
        assert psutil.Process(again[0]).ppid() == os.getpid()
        assert _ready(manager, [1]) == {1: pids[1]}


async def test_the_bot_module_top_level_runs_once_in_each_cluster(redis_url: str, r: aioredis.Redis,
                                                                  tmp_path: Path) -> None:
    set_modes(tmp_path, default="well")
    config = host_config(redis_url, tmp_path, bot={"module": "toplevel", "cwd": str(Path(__file__).parent / "programs"),
                                                   "launcher": "fork"})
    await write_layout(r)
    async with ClusterManager(config) as manager:
        assert manager.launcher is not None
        await grant(r, 0, epoch=1)
        await grant(r, 1, epoch=1)
        pids = await wait_until(lambda: _ready(manager, [0, 1]), timeout=20, message="clusters ready")
        os.kill(pids[1], signal.SIGKILL)
        again = await wait_until(lambda: (v := _ready(manager, [1])) and v[1] != pids[1] and v, timeout=20,
                                 message="cluster 1 restarted")
        launcher = manager.launcher.pid
    lines = (tmp_path / "stub" / "toplevel.txt").read_text().split("\n")
    runs = [line.split() for line in lines if line]
    # once per cluster process, as __main__, in the cluster process itself (never in the launcher)
    assert sorted(int(pid) for pid, *_ in runs) == sorted([pids[0], pids[1], again[1]])
    assert all(name == "__main__" and int(ppid) == os.getpid() for _, ppid, name, *_ in runs)
    assert launcher not in {int(pid) for pid, *_ in runs}
    # the forked processes get the run identities too: the restart of cluster 1 is told its first run is dead
    by_pid = {int(pid): (run, dead) for pid, _, _, run, dead in runs}
    assert by_pid[pids[0]][1] == "-" and by_pid[pids[1]][1] == "-"
    assert by_pid[again[1]][1] == by_pid[pids[1]][0] != "-"
    assert len({run for run, _ in by_pid.values()}) == 3


async def test_exit_codes_and_signals_are_exact(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="well", **{"0": "config", "1": "crash"})
    config = host_config(redis_url, tmp_path, restart={"policy": "never"})
    await write_layout(r)
    async with ClusterManager(config) as manager:
        await grant(r, 0, epoch=1)
        await grant(r, 1, epoch=1)
        await grant(r, 2, epoch=1)
        await wait_until(lambda: all(c in manager.clusters and manager.clusters[c].exit_code is not None
                                     for c in (0, 1)), timeout=20, message="clusters 0 and 1 exited")
        assert manager.clusters[0].exit_code == 78 and manager.clusters[1].exit_code == 1
        assert "boom at start" in manager.clusters[1].last_error
        pid = (await wait_until(lambda: _ready(manager, [2]), timeout=20, message="cluster 2 ready"))[2]
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: manager.clusters[2].exit_signal is not None, timeout=10, message="cluster 2 exit")
        assert manager.clusters[2].exit_signal == signal.SIGKILL


async def test_a_launcher_started_before_the_supervisor_is_adopted_or_ended(redis_url: str, r: aioredis.Redis,
                                                                             tmp_path: Path) -> None:
    # letsfrag supervise starts the launcher before its imports and its config: used with fork, ended with exec
    started = start_launcher()
    assert adopt_launcher(host_config(redis_url, tmp_path, launcher="exec"), started) is None
    assert started[0].returncode is not None and started[1].fileno() == -1
    set_modes(tmp_path, default="well")
    started = start_launcher()
    launcher = adopt_launcher(host_config(redis_url, tmp_path), started)
    assert launcher is not None
    await write_layout(r)
    async with ClusterManager(host_config(redis_url, tmp_path), launcher=launcher) as manager:
        assert manager.launcher is launcher
        await grant(r, 0, epoch=1)
        pids = await wait_until(lambda: _ready(manager, [0]), timeout=20, message="cluster ready")
        assert launcher.pid == started[0].pid and launcher.starts == 1
        assert psutil.Process(pids[0]).ppid() == os.getpid()
    assert started[0].returncode is not None  # closed with the supervisor
