"""``letsfrag logs`` as an operator runs it: the last lines, ``-f`` through rotations, and logs kept elsewhere.

The log files are written by the supervisor's own :class:`ClusterLog` (small ``max_bytes`` so it rotates);
the command runs as a subprocess reading them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
from support.waiting import wait_until_sync

from letsfrag.contract.keys import Keys
from letsfrag.supervisor.logfile import ClusterLog, log_path


def _config(tmp_path: Path, logs: Path, redis_url: str = "redis://127.0.0.1:1/0") -> Path:
    path = tmp_path / "host.yaml"
    path.write_text(f"redis: {redis_url}\nnamespace: logs-test\nhost:\n  id: h0\nbot:\n  command: [\"true\"]\n"
                    f"  token: x\nlogs:\n  dir: {logs}\n")
    return path


def _logs(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "letsfrag", "logs", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.integration
def test_last_lines_of_one_cluster_and_prefixed_lines_of_all(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for cid in (0, 1):
        log = ClusterLog(log_path(logs, cid), max_bytes=10_000, backups=2)
        log.write("".join(f"c{cid} line {i}\n" for i in range(30)).encode())
        log.close()
    config = _config(tmp_path, logs)
    done = _logs("-c", str(config), "--cluster", "1", "-n", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["c1 line 27", "c1 line 28", "c1 line 29"]
    done = _logs("--dir", str(logs), "-n", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["cluster-0 | c0 line 29", "cluster-1 | c1 line 29"]


@pytest.mark.integration
def test_follow_reads_every_line_once_through_rotations(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    log = ClusterLog(log_path(logs, 0), max_bytes=600, backups=2)
    log.write(b"before\n")
    follower = subprocess.Popen([sys.executable, "-m", "letsfrag", "logs", "--dir", str(logs), "--cluster", "0",
                                 "-f", "-n", "1"], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(line.rstrip("\n") for line in follower.stdout or []),
                              daemon=True)
    reader.start()
    try:
        wait_until_sync(lambda: seen == ["before"], timeout=20, message="the last line shown first")
        expected = []
        for i in range(200):  # 200 x ~14 bytes into 600-byte files: several rotations
            text = f"follow {i:04d}"
            expected.append(text)
            log.write(f"{text}\n".encode())
            if i % 20 == 0:
                wait_until_sync(lambda n=len(expected): len(seen) >= n + 1, timeout=20,
                                message=f"line {i} followed")
        assert log.rotations >= 3
        wait_until_sync(lambda: len(seen) >= len(expected) + 1, timeout=20, message="every line followed")
        assert seen == ["before", *expected], "each line once, in order, across rotations"
    finally:
        follower.terminate()
        follower.wait(10)
        log.close()


def test_a_cluster_on_another_host_names_that_host(tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(Keys("logs-test").assignment, "3", json.dumps({"host": "h1", "epoch": 7}))
    finally:
        client.close()
    config = _config(tmp_path, tmp_path / "logs", redis_url)
    done = _logs("-c", str(config), "--cluster", "3")
    assert done.returncode == 1
    assert "cluster 3 runs on host h1" in done.stderr and "Traceback" not in done.stderr
    done = _logs("-c", str(config), "--cluster", "4")
    assert done.returncode == 1 and "no log for cluster 4" in done.stderr
    done = _logs("-c", str(config), "--host", "h9")
    assert done.returncode == 1 and "host h9's logs are on that machine (this is host h0)" in done.stderr
    done = _logs("--cluster", "0")
    assert done.returncode == 2 and "give -c HOST_CONFIG" in done.stderr
