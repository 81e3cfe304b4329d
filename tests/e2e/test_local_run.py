"""`letsfrag run` and `letsfrag demo` as a newcomer uses them: one command, everything on one machine."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from support.waiting import scaled, wait_until_sync

from letsfrag.lab.rehearsal import EXAMPLE_BOT, Rehearsal

pytestmark = pytest.mark.integration


def test_letsfrag_run_brings_shards_up_restarts_a_killed_cluster_and_stops_clean(
    rehearsal: Callable[..., Rehearsal], tmp_path: Path
) -> None:
    sim = rehearsal(shards=8, shards_per_cluster=4, max_concurrency=4)
    sim.workdir.mkdir(parents=True, exist_ok=True)
    sim.start_sim()
    config = tmp_path / "local.yaml"
    config.write_text(
        "redis: embedded\n"
        f"embedded:\n  dir: {tmp_path / 'state'}\n"
        "namespace: local\nshards: 8\nshards_per_cluster: 4\nmax_concurrency: 4\nidentify_window: 1s\n"
        "lease:\n  ttl: 4s\n  grace: 1s\nheartbeat_interval: 1s\nhosts:\n  expected: 1\n"
        f"host:\n  id: solo\n  capacity: 2\n"
        f"bot:\n  command: {json.dumps([sys.executable, str(EXAMPLE_BOT)])}\n  token: {sim.token}\n"
        f"discord:\n  api_url: {sim.sim_url}/api/v10\n  gateway_url: {sim.sim_url.replace('http', 'ws')}/\n"
        "restart:\n  backoff:\n    initial: 200ms\n"
        f"logs:\n  dir: {tmp_path / 'logs'}\n"
    )
    run = subprocess.Popen([sys.executable, "-m", "letsfrag", "run", str(config), "--no-progress"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)
    try:
        wait_until_sync(sim.all_ready, timeout=60, interval=0.25, message="8 shards READY")
        url_file = tmp_path / "state" / "redis.url"
        assert url_file.read_text().strip() == f"unix://{tmp_path / 'state' / 'redis.sock'}"

        def cluster_processes() -> list[psutil.Process]:
            found = []
            for process in psutil.Process(run.pid).children(recursive=True):
                try:
                    if process.status() != psutil.STATUS_ZOMBIE and str(EXAMPLE_BOT) in process.cmdline():
                        found.append(process)
                except psutil.Error:
                    continue
            return found

        victims = wait_until_sync(lambda: len(cluster_processes()) == 2 and cluster_processes(), timeout=10)
        victim = victims[0]
        victim.kill()
        wait_until_sync(lambda: len(cluster_processes()) == 2 and victim.pid not in
                        [p.pid for p in cluster_processes()], timeout=30, message="killed cluster respawned")
        wait_until_sync(sim.all_ready, timeout=60, interval=0.25, message="8 shards READY again")
        tree = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=scaled(30)) == 0, run.stderr.read().decode()[-2000:] if run.stderr else ""
        _, alive = psutil.wait_procs(tree, timeout=scaled(5))
        assert alive == [], f"left behind: {alive}"
        assert not url_file.exists()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_demo_headless_end_to_end() -> None:
    demo = subprocess.run([sys.executable, "-m", "letsfrag", "demo", "--headless", "--duration", "20s"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "demo passed" in demo.stdout
    assert "killed host" in demo.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_demo_interrupted_leaves_nothing_behind(sig: signal.Signals) -> None:
    demo = subprocess.Popen([sys.executable, "-m", "letsfrag", "demo", "--headless", "--duration", "120s"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        assert demo.stdout is not None
        started = wait_until_sync(lambda: "shards READY" in (demo.stdout.readline() if demo.stdout else ""),
                                  timeout=60, message="the demo's first progress line")
        assert started
        tree = [psutil.Process(demo.pid), *psutil.Process(demo.pid).children(recursive=True)]
        assert len(tree) >= 5, "redis, simulator, broker and two hosts were started"
        demo.send_signal(sig)
        assert demo.wait(timeout=scaled(60)) == 130
        _, alive = psutil.wait_procs(tree, timeout=scaled(10))
        assert alive == [], f"left behind: {alive}"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
