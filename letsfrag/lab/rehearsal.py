"""A whole multi-process deployment on this machine: Redis, the simulated Discord, brokers and hosts.

``letsfrag demo``, the end-to-end and chaos tests and the benchmarks all run deployments through this one
class, so that what the demo shows is what the tests prove. Every process is started in its own session and
every one of them (with its children) is stopped by :meth:`Rehearsal.close`; the simulator, brokers and hosts
also stop by themselves when the process owning the rehearsal dies (a :class:`~letsfrag.lifeline.Lifeline`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from .. import samples
from ..contract.records import Grant
from ..errors import LetsfragError
from ..events import Event
from ..lifeline import Lifeline
from ..redis_server import RedisServer
from ..supervisor.launcher import NAME as LAUNCHER_NAME

#: the demo bot every rehearsal host runs unless told otherwise (``examples/bot.py``, shipped in the package)
EXAMPLE_BOT = samples.BOT


@dataclass
class RehearsalSettings:
    """The shape and timers of a rehearsal deployment (short timers so failures show within seconds)."""

    hosts: int = 2
    shards: int = 16
    shards_per_cluster: int = 4
    max_concurrency: int = 4
    identify_window: float = 1.0
    lease_ttl: float = 4.0
    lease_grace: float = 1.0
    heartbeat_interval: float = 1.0
    startup_grace: float = 10.0
    rebalance: str = "on-join"
    capacity: int | None = None
    guilds_per_shard: int = 8
    sim_heartbeat_interval: float = 5.0
    sim_ack_delay: float = 0.005
    #: the simulator closes a shard holding more guilds than this with 4011 (``None``: never)
    sim_max_guilds_per_shard: int | None = None
    traffic_rate: float = 0.0
    secret: bool = True
    namespace: str = "rehearsal"
    bot_command: list[str] | None = None
    #: ``bot.launcher`` of the example bot (``bot.module: bot``, cwd examples/); a ``bot_command`` is exec'd
    launcher: str = "fork"
    restart_initial: float = 0.5
    sample_interval: float = 1.0
    hang_timeout: float = 30.0
    stop_timeout: float = 5.0
    max_memory: str | None = None
    redis_persist: bool = False
    #: ``--log-format`` of the broker and the supervisors (``plain`` or ``json``; clusters follow the supervisor)
    log_format: str = "plain"
    extra_host_yaml: str = ""
    #: per-host replacement of ``bot_command`` (a host running a faulty bot, for chaos tests)
    host_bot_commands: dict[str, list[str]] = field(default_factory=dict)
    #: extra environment of every cluster process (``bot.env``)
    bot_env: dict[str, str] = field(default_factory=dict)
    #: ``restart.max_restarts`` / ``restart.window`` of the hosts (unset: the config defaults)
    max_restarts: int | None = None
    restart_window: float | None = None
    #: the whole ``redis:`` entry of every config as YAML (e.g. a Sentinel mapping); unset: the rehearsal's URL
    redis_yaml: str | None = None
    #: Redis only on a unix socket in ``workdir`` (no TCP port other users could reach)
    redis_socket: bool = False
    #: SIGTERM Redis when the thread that started it ends (start it from the main thread; see lifeline)
    redis_dies_with_parent: bool = False

    @property
    def clusters(self) -> int:
        return math.ceil(self.shards / self.shards_per_cluster)


def stop_processes(processes: Sequence[subprocess.Popen[Any]], timeout: float = 10.0) -> None:
    """SIGTERM every process, wait up to ``timeout`` for each, SIGKILL and reap the ones still running."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _drain(stream: IO[bytes], sink: IO[bytes]) -> None:
    with contextlib.suppress(Exception):
        while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536):
            sink.write(chunk)
            sink.flush()


@dataclass
class Rehearsal:
    """Start, disturb and stop a local deployment (see module docstring)."""

    settings: RehearsalSettings
    workdir: Path
    token: str = "rehearsal-token"
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    redis: RedisServer | None = None
    sim: subprocess.Popen[bytes] | None = None
    sim_url: str = ""
    brokers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    hosts: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: a Redis this rehearsal did not start (e.g. the current master behind Sentinel); ``start(redis=False)``
    external_redis_url: str | None = None
    _files: list[IO[bytes]] = field(default_factory=list)
    _lifeline: Lifeline | None = None

    # -------------------------------------------------------------------------------------------- start

    def start(self, *, redis: bool = True) -> Rehearsal:
        """Redis (unless ``redis=False``: set ``external_redis_url``), simulator, one broker and the hosts."""
        if redis:
            self.start_redis()
        self.start_sim()
        self.start_broker("b0")
        for index in range(self.settings.hosts):
            self.start_host(f"h{index}")
        return self

    def start_redis(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        self.redis = RedisServer(port=0 if s.redis_socket else None, data_dir=self.workdir / "redis",
                                 persist=s.redis_persist,
                                 unix_socket=self.workdir / "redis.sock" if s.redis_socket else None,
                                 die_with_parent=s.redis_dies_with_parent)
        self.redis.start()

    def stop_redis(self) -> None:
        """Stop Redis (SIGTERM: with ``redis_persist`` its data is flushed to the append-only file)."""
        if self.redis is None:
            raise LetsfragError("redis is not started")
        self.redis.stop()

    def resume_redis(self) -> None:
        """Start the stopped Redis again on the same port and data folder."""
        if self.redis is None:
            raise LetsfragError("redis was never started")
        self.redis.start()

    @property
    def redis_url(self) -> str:
        if self.external_redis_url is not None:
            return self.external_redis_url
        if self.redis is None:
            raise LetsfragError("redis is not started")
        return self.redis.url

    def log_file(self, name: str) -> IO[bytes]:
        """An append-mode log file ``<workdir>/<name>.log`` that :meth:`close` closes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        handle = open(self.workdir / f"{name}.log", "ab")
        self._files.append(handle)
        return handle

    @property
    def lifeline(self) -> Lifeline:
        """The pipe our children watch: they stop when this process dies (closed by :meth:`close`)."""
        if self._lifeline is None:
            self._lifeline = Lifeline()
        return self._lifeline

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"REHEARSAL_SECRET": self.secret, "BOT_TOKEN": self.token, "PYTHONUNBUFFERED": "1"})
        return env

    def start_sim(self, timeout: float = 20.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        argv = [
            sys.executable, "-m", "letsfrag.sim", "--port", "0", "--shards", str(s.shards),
            "--guilds", str(s.shards * s.guilds_per_shard), "--max-concurrency", str(s.max_concurrency),
            "--identify-window", f"{s.identify_window}s", "--heartbeat-interval", f"{s.sim_heartbeat_interval}s",
            "--ack-delay", f"{s.sim_ack_delay}s", "--traffic-rate", str(s.traffic_rate), "--token", self.token,
        ]
        if s.sim_max_guilds_per_shard is not None:
            argv += ["--max-guilds-per-shard", str(s.sim_max_guilds_per_shard)]
        self.sim = subprocess.Popen(argv, env={**os.environ, **self.lifeline.env()}, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=self.log_file("sim"), start_new_session=True,
                                    pass_fds=self.lifeline.pass_fds())
        assert self.sim.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.sim.stdout.readline().decode()
            if not line:
                raise LetsfragError(f"the simulator exited at start; see {self.workdir / 'sim.log'}")
            if "listening on " in line:
                self.sim_url = line.rsplit("listening on ", 1)[1].strip()
                threading.Thread(target=_drain, args=(self.sim.stdout, self.log_file("sim-stdout")),
                                 daemon=True).start()
                return
        raise LetsfragError(f"the simulator did not start within {timeout:.0f}s")

    def _common_yaml(self) -> str:
        s = self.settings
        redis_entry = s.redis_yaml if s.redis_yaml is not None else f"redis: {self.redis_url}\n"
        text = f"{redis_entry.rstrip()}\nnamespace: {s.namespace}\n"
        if s.secret:
            text += "secret: ${REHEARSAL_SECRET}\n"
        return text

    def broker_yaml(self) -> str:
        s = self.settings
        return (
            self._common_yaml()
            + f"shards: {s.shards}\nshards_per_cluster: {s.shards_per_cluster}\n"
            + f"max_concurrency: {s.max_concurrency}\nidentify_window: {s.identify_window}s\n"
            + f"hosts:\n  expected: {s.hosts}\n  startup_grace: {s.startup_grace}s\n"
            + f"lease:\n  ttl: {s.lease_ttl}s\n  grace: {s.lease_grace}s\n"
            + f"heartbeat_interval: {s.heartbeat_interval}s\nrebalance: {s.rebalance}\n"
            + f"leader_ttl: {max(2.0, s.lease_ttl)}s\n"
        )

    def host_yaml(self, host_id: str, capacity: int | None = None) -> str:
        s = self.settings
        command = s.host_bot_commands.get(host_id) or s.bot_command
        program = (f"  command: {json.dumps(command)}\n" if command else
                   f"  module: {EXAMPLE_BOT.stem}\n  cwd: {json.dumps(str(EXAMPLE_BOT.parent))}\n"
                   f"  launcher: {s.launcher}\n")
        capacity = capacity if capacity is not None else (s.capacity if s.capacity is not None else s.clusters)
        limits = f"limits:\n  hang_timeout: {s.hang_timeout}s\n  stop_timeout: {s.stop_timeout}s\n"
        if s.max_memory:
            limits += f"  max_memory: {s.max_memory}\n"
        return (
            self._common_yaml()
            + f"host:\n  id: {host_id}\n  capacity: {capacity}\n"
            + f"bot:\n{program}  token: ${{BOT_TOKEN}}\n"
            + (f"  env: {json.dumps(s.bot_env)}\n" if s.bot_env else "")
            + f"discord:\n  api_url: {self.sim_url}/api/v10\n"
            + f"  gateway_url: {self.sim_url.replace('http://', 'ws://')}/\n"
            + f"restart:\n  backoff:\n    initial: {s.restart_initial}s\n"
            + (f"  max_restarts: {s.max_restarts}\n" if s.max_restarts is not None else "")
            + (f"  window: {s.restart_window}s\n" if s.restart_window is not None else "")
            + limits
            + f"logs:\n  dir: {self.workdir / 'logs' / host_id}\n"
            + f"sample_interval: {s.sample_interval}s\n"
            + s.extra_host_yaml
        )

    def _letsfrag(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "letsfrag", "--log-format", self.settings.log_format, *args]
        return subprocess.Popen(argv, env={**self.env(), **self.lifeline.env()}, stdin=subprocess.DEVNULL,
                                stdout=self.log_file(name), stderr=subprocess.STDOUT, start_new_session=True,
                                pass_fds=self.lifeline.pass_fds())

    def start_broker(self, broker_id: str = "b0") -> subprocess.Popen[bytes]:
        path = self.workdir / "broker.yaml"
        path.write_text(self.broker_yaml())
        self.brokers[broker_id] = self._letsfrag("broker", str(path), "--broker-id", broker_id,
                                                 name=f"broker-{broker_id}")
        return self.brokers[broker_id]

    def start_host(self, host_id: str, capacity: int | None = None) -> subprocess.Popen[bytes]:
        path = self.workdir / f"{host_id}.yaml"
        path.write_text(self.host_yaml(host_id, capacity))
        self.hosts[host_id] = self._letsfrag("supervise", str(path), name=f"host-{host_id}")
        return self.hosts[host_id]

    # ------------------------------------------------------------------------------------------ disturb

    @staticmethod
    def tree(process: subprocess.Popen[bytes] | None) -> list[psutil.Process]:
        """The process and all its descendants (empty when gone)."""
        if process is None:
            return []
        try:
            parent = psutil.Process(process.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def signal_tree(self, process: subprocess.Popen[bytes] | None, sig: int) -> int:
        victims = self.tree(process)
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.send_signal(sig)
        return len(victims)

    def kill_host(self, host_id: str) -> int:
        """SIGKILL a host's supervisor and its clusters (a machine dying); return the number of processes."""
        process = self.hosts[host_id]
        count = self.signal_tree(process, signal.SIGKILL)
        process.wait()
        return count

    def freeze_host(self, host_id: str) -> int:
        """SIGSTOP a host's supervisor and clusters (a VM pause / partition)."""
        return self.signal_tree(self.hosts[host_id], signal.SIGSTOP)

    def thaw_host(self, host_id: str) -> int:
        return self.signal_tree(self.hosts[host_id], signal.SIGCONT)

    def kill_supervisor(self, host_id: str) -> list[int]:
        """SIGKILL only a host's supervisor, not its clusters; return the cluster pids it left behind."""
        process = self.hosts[host_id]
        orphans = [p.pid for p in self.tree(process)[1:]]
        process.kill()
        process.wait()
        return orphans

    def kill_broker(self, broker_id: str = "b0") -> None:
        process = self.brokers[broker_id]
        process.kill()
        process.wait()

    def cluster_pids(self, host_id: str | None = None) -> list[int]:
        """Pids of every cluster process currently below a supervisor (of ``host_id`` only, when given)."""
        pids = []
        for process in self.hosts.values() if host_id is None else [self.hosts[host_id]]:
            pids += [p.pid for p in self.tree(process)[1:] if not _is_launcher(p)]
        return pids

    def launcher_pids(self) -> list[int]:
        """Pids of the supervisors' pre-fork launchers (``bot.launcher: fork``)."""
        return [p.pid for process in self.hosts.values() for p in self.tree(process)[1:] if _is_launcher(p)]

    def assignment(self, client: Any = None) -> dict[int, tuple[str, int]]:
        """The broker's current assignment: cluster id -> (host, epoch); ``client``: a sync redis client to reuse."""
        import redis

        own = client is None
        client = client or redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            raw: dict[str, str] = client.hgetall(f"{self.settings.namespace}:assignment")
        finally:
            if own:
                client.close()
        grants, _ = Grant.parse_all(raw, key=f"{self.settings.namespace}:assignment")
        return {cid: (grant.host, grant.epoch) for cid, grant in grants.items()}

    def redis_client(self) -> Any:
        """A synchronous redis-py client of the deployment's Redis (close it after use)."""
        import redis

        return redis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=5)

    def events(self, count: int = 1000) -> list[Event]:
        """The newest ``count`` entries of ``{ns}:events``, oldest first."""
        client = self.redis_client()
        try:
            entries: Any = client.xrevrange(f"{self.settings.namespace}:events", count=count)
        finally:
            client.close()
        return [Event.from_stream(str(entry_id), dict(data)) for entry_id, data in reversed(entries or [])]

    def letsfrag_cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``letsfrag ARGS --redis URL --namespace NS`` (a tool command such as ``status``) and wait."""
        argv = [sys.executable, "-m", "letsfrag", *args, "--redis", self.redis_url,
                "--namespace", self.settings.namespace]
        return subprocess.run(argv, env=self.env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)

    # -------------------------------------------------------------------------------------------- sim

    def sim_stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.sim_url}/_sim/stats", timeout=5) as reply:
            return dict(json.load(reply))

    def sim_post(self, path: str) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.sim_url}{path}", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as reply:
            body = reply.read()
        return dict(json.loads(body)) if body else {}

    def all_ready(self) -> bool:
        """Every shard has exactly one live session at the simulator."""
        stats = self.sim_stats()
        return sorted(stats.get("shards_ready", [])) == list(range(self.settings.shards)) and all(
            int(n) == 1 for n in stats.get("sessions_active", {}).values() if int(n) > 0
        )

    # -------------------------------------------------------------------------------------------- stop

    def processes(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for process in [*self.hosts.values(), *self.brokers.values(), self.sim]:
            procs += self.tree(process)
        return procs

    def close(self, timeout: float = 15.0) -> list[int]:
        """Stop hosts gracefully, then brokers, the simulator and Redis; kill what is left.

        Returns the pids that had to be killed: a host, broker or simulator that did not exit within ``timeout``
        of its SIGTERM (a supervisor that hangs in its stop), and any process of the tree still alive after them
        (for tests: should be empty).
        """
        tree = self.processes()
        killed: list[int] = []
        for process in [*self.hosts.values(), *self.brokers.values(), self.sim]:
            if process is not None and process.poll() is None:
                self.signal_tree(process, signal.SIGCONT)
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in [*self.hosts.values(), *self.brokers.values(), self.sim]:
            if process is None:
                continue
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                killed.append(process.pid)
                self.signal_tree(process, signal.SIGKILL)
                process.wait()
        _, alive = psutil.wait_procs(tree, timeout=5)
        for survivor in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                survivor.kill()
        if self.redis is not None:
            self.redis.stop()
        for handle in self._files:
            with contextlib.suppress(OSError):
                handle.close()
        if self._lifeline is not None:
            self._lifeline.close()
            self._lifeline = None
        return killed + [p.pid for p in alive if p.pid not in killed]

    def __enter__(self) -> Rehearsal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_launcher(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.name() == LAUNCHER_NAME
    return False
