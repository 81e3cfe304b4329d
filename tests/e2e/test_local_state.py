"""`letsfrag run` and `letsfrag demo` leave nothing open to other users and nothing running after they die.

* the shipped ``configs/local.yaml`` (relative ``embedded.dir``) starts from a fresh copy of the repository;
* its Redis, URL and secret are out of reach of another local user (uid 65534);
* one ``embedded.dir`` never gets two redis-servers, also right after a SIGKILLed run;
* SIGKILL of ``run`` or of ``demo`` leaves no process behind.

Processes are found by a marker in their environment (every descendant inherits it), not by parentage:
children of a SIGKILLed process are re-parented and would be missed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from support.waiting import scaled, wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MARK = "LETSFRAG_TEST_MARK"
NOBODY = 65534


def marked(mark: str, folder: Path | str | None = None) -> list[psutil.Process]:
    """Every live process whose environment carries ``MARK=mark`` or whose command line names ``folder`` (the
    process title of redis-server overwrites its environment)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and (
                    process.environ().get(MARK) == mark
                    or (folder is not None and str(folder) in " ".join(process.cmdline()))):
                found.append(process)
        except psutil.Error:
            continue
    return found


def redis_servers(folder: Path) -> list[psutil.Process]:
    """Live redis-server processes serving the socket in ``folder``."""
    found = []
    for process in psutil.process_iter():
        try:
            if (process.status() != psutil.STATUS_ZOMBIE and "redis-server" in process.name()
                    and str(folder) in " ".join(process.cmdline())):
                found.append(process)
        except psutil.Error:
            continue
    return found


def kill_marked(mark: str, folder: Path | str | None = None) -> None:
    for process in marked(mark, folder):
        try:
            process.kill()
        except psutil.Error:
            continue


@pytest.fixture
def copy() -> Iterator[Path]:
    """A fresh copy of the repository's config and demo bot in a folder every user may enter (unlike tmp_path),
    so only letsfrag's own permissions keep another user out."""
    folder = Path(tempfile.mkdtemp(prefix="lf-copy-", dir="/tmp"))
    os.chmod(folder, 0o755)
    (folder / "configs").mkdir()
    shutil.copy(REPO / "configs" / "local.yaml", folder / "configs" / "local.yaml")
    shutil.copytree(REPO / "examples", folder / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def point_at_simulator(config: Path, sim: Rehearsal) -> None:
    """Uncomment the shipped config's two discord lines (as its comment tells a newcomer to) for ``sim``."""
    text = config.read_text()
    for old, new in (("# discord:", "discord:"),
                     ("#   api_url: http://127.0.0.1:8080/api/v10", f"  api_url: {sim.sim_url}/api/v10"),
                     ("#   gateway_url: ws://127.0.0.1:8080/", f"  gateway_url: {sim.sim_url.replace('http', 'ws')}/"),
                     ("max_concurrency: 1\n", f"max_concurrency: {sim.settings.max_concurrency}\n")):
        assert old in text, f"configs/local.yaml no longer contains {old!r}"
        text = text.replace(old, new, 1)
    config.write_text(text)


def start_run(copy: Path, sim: Rehearsal, mark: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, MARK: mark, "BOT_TOKEN": sim.token}
    return subprocess.Popen([sys.executable, "-m", "letsfrag", "run", "configs/local.yaml", "--no-progress"],
                            cwd=copy, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


@pytest.fixture
def simulator(rehearsal: Callable[..., Rehearsal]) -> Rehearsal:
    sim = rehearsal(shards=8, shards_per_cluster=4, max_concurrency=4)
    sim.start_sim()
    return sim


def nobody_python() -> str | None:
    """An interpreter uid 65534 may run (the venv's may live under /root); None without root or one."""
    if os.geteuid() != 0:
        return None
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if not candidate:
            continue
        try:
            probe = subprocess.run([candidate, "-I", "-S", "-c", "pass"], user=NOBODY, group=NOBODY, cwd="/",
                                   capture_output=True, timeout=30, check=False)
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


PROBE = r"""
import socket, sys
results = []
for path in sys.argv[2:]:
    try:
        open(path).read()
        results.append("read " + path)
    except OSError as exc:
        results.append(f"refused {type(exc).__name__}")
with socket.socket(socket.AF_UNIX) as sock:
    try:
        sock.connect(sys.argv[1])
        sock.sendall(b"PING\r\n")
        results.append("redis " + sock.recv(64).decode())
    except OSError as exc:
        results.append(f"refused {type(exc).__name__}")
print("\n".join(results))
"""


def test_shipped_local_config_runs_from_a_fresh_copy_private_to_its_user_and_dies_with_sigkill(
    copy: Path, simulator: Rehearsal
) -> None:
    point_at_simulator(copy / "configs" / "local.yaml", simulator)
    mark = uuid.uuid4().hex
    run = start_run(copy, simulator, mark)
    try:
        wait_until_sync(lambda: run.poll() is not None or simulator.all_ready(), timeout=90, interval=0.25,
                        message="8 shards READY")
        assert run.poll() is None, run.stderr.read().decode()[-2000:] if run.stderr else ""

        state = copy / ".letsfrag"  # relative embedded.dir: relative to the working directory
        url, secret = (state / "redis.url").read_text().strip(), (state / "secret").read_text().strip()
        assert url == f"unix://{state / 'redis.sock'}"
        assert len(secret) >= 32
        for folder in (state, state / "redis"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        logs = list((copy / "logs").rglob("*"))
        assert logs, "the clusters' logs"
        for path in [*state.iterdir(), *(state / "redis").iterdir(), *logs]:
            if path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            elif path.is_dir():
                assert stat.S_IMODE(path.stat().st_mode) == 0o700, path

        tree = marked(mark, copy)
        servers = redis_servers(state)
        assert len(servers) == 1 and servers[0] in tree
        assert servers[0].net_connections(kind="inet") == [], "the embedded Redis listens on TCP"
        for process in tree:  # the secret and the token travel in the environment, never on a command line
            assert secret not in " ".join(process.cmdline()) and simulator.token not in " ".join(process.cmdline())

        # another local user: cannot connect to Redis nor read the URL or the secret (but can read the config)
        python = nobody_python()
        if python is not None:
            probe = subprocess.run([python, "-I", "-S", "-c", PROBE, str(state / "redis.sock"),
                                    str(copy / "configs" / "local.yaml"), str(state / "redis.url"),
                                    str(state / "secret")],
                                   user=NOBODY, group=NOBODY, cwd="/", capture_output=True, text=True, timeout=30)
            assert probe.returncode == 0, probe.stderr
            assert probe.stdout.split("\n")[:4] == [f"read {copy / 'configs' / 'local.yaml'}",
                                                    "refused PermissionError", "refused PermissionError",
                                                    "refused PermissionError"], probe.stdout

        # the tools of the same user find the socket and the per-run secret through the config
        tool_env = {k: v for k, v in os.environ.items() if k != "LETSFRAG_SECRET"}
        # (status: 0 or 1, its records may lag the simulator by a heartbeat; 2 would be "Redis unreachable")
        for argv, codes in ((["status", "-c", "configs/local.yaml"], (0, 1)),
                            (["restart", "-c", "configs/local.yaml", "--cluster", "1", "--timeout", "60s"], (0,))):
            tool = subprocess.run([sys.executable, "-m", "letsfrag", *argv], cwd=copy, env=tool_env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)
            assert tool.returncode in codes, f"{argv}: {tool.stdout[-1500:]}{tool.stderr[-1500:]}"

        tree = marked(mark, copy)
        assert len(tree) >= 4, f"run, redis-server and two clusters: {tree}"
        run.kill()  # SIGKILL: no handler runs; every child must notice on its own
        run.wait()
        wait_until_sync(lambda: not marked(mark, copy), timeout=15, interval=0.2, message="no process left by run")
        if python is None:
            pytest.skip("the other-user probe needs root and an interpreter uid 65534 may run (the rest passed)")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        kill_marked(mark, copy)


def test_two_runs_on_one_dir_never_start_two_redis_servers(copy: Path, simulator: Rehearsal) -> None:
    point_at_simulator(copy / "configs" / "local.yaml", simulator)
    state = copy / ".letsfrag"
    first_mark, third_mark = uuid.uuid4().hex, uuid.uuid4().hex
    first = start_run(copy, simulator, first_mark)
    third: subprocess.Popen[bytes] | None = None
    try:
        first_tree = wait_until_sync(lambda: (state / "redis.url").exists() and len(marked(first_mark)) >= 2
                                     and marked(first_mark, state), timeout=30,
                                     message="the first run's redis-server and clusters")
        second = start_run(copy, simulator, uuid.uuid4().hex)
        _, err = second.communicate(timeout=scaled(30))
        assert second.returncode == 2, err.decode()
        assert f"is in use by another `letsfrag run` (pid {first.pid})" in err.decode()
        assert "Traceback" not in err.decode()
        assert len(redis_servers(state)) == 1

        first.kill()
        first.wait()
        third = start_run(copy, simulator, third_mark)  # at once: the dying run's server may still be up
        counts = []

        def third_serving() -> bool:
            servers = redis_servers(state)
            counts.append(len(servers))
            return any(server.ppid() == third.pid for server in servers)

        wait_until_sync(third_serving, timeout=30, interval=0.02, message="the third run's redis-server")
        assert max(counts) == 1, f"two redis-servers on one dir: {counts}"
        _, alive = psutil.wait_procs(first_tree, timeout=scaled(15))
        assert alive == [], f"left by the SIGKILLed run: {alive}"
        # a cluster forked after the snapshot above goes the same way, within the same 15 s
        wait_until_sync(lambda: not marked(first_mark), timeout=15, message="nothing of the SIGKILLed run left")
        third.send_signal(signal.SIGINT)
        assert third.wait(timeout=scaled(30)) == 0, third.stderr.read().decode()[-2000:] if third.stderr else ""
        assert not (state / "redis.url").exists() and not (state / "secret").exists()
    finally:
        for process in (first, third):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        kill_marked(first_mark)
        kill_marked(third_mark, state)


def test_demo_sigkilled_leaves_nothing_behind() -> None:
    mark = uuid.uuid4().hex
    demo = subprocess.Popen([sys.executable, "-m", "letsfrag", "demo", "--headless", "--duration", "120s"],
                            env={**os.environ, MARK: mark}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    workdir = "letsfrag-demo-"  # replaced by the demo's own folder once it has printed it
    try:
        assert demo.stdout is not None

        def progress() -> bool:
            nonlocal workdir
            line = demo.stdout.readline() if demo.stdout else ""
            found = re.search(re.escape(tempfile.gettempdir()) + r"/letsfrag-demo-[A-Za-z0-9_]+", line)
            if found and not workdir.startswith("/"):  # (not after "logs in": the console may wrap lines)
                workdir = found.group(0)
            return "shards READY" in line

        wait_until_sync(progress, timeout=60, message="the demo's first progress line")
        assert workdir.startswith("/"), workdir
        names = wait_until_sync(lambda: len(marked(mark, workdir)) >= 7
                                and [" ".join(p.cmdline()) for p in marked(mark, workdir)],
                                timeout=30, message="redis, simulator, broker, two hosts and their clusters")
        assert any("redis-server" in name and f"unixsocket:{workdir}" in name for name in names), names
        demo.kill()
        demo.wait()
        wait_until_sync(lambda: not marked(mark, workdir), timeout=15, interval=0.2,
                        message="no process left by the demo")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if workdir.startswith("/"):
            kill_marked(mark, workdir)
            shutil.rmtree(workdir, ignore_errors=True)
