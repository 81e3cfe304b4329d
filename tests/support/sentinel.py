"""A Redis master, one replica and three sentinels on loopback ports, for the Sentinel failover test."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from letsfrag.redis_server import RedisServer, find_redis_server, free_port
from support.waiting import scaled

MASTER_NAME = "mymaster"


class SentinelGroup:
    """``start()`` master, replica and sentinels; ``kill_master()``; ``close()`` stops everything."""

    def __init__(self, workdir: Path, sentinels: int = 3, down_after_ms: int = 1000) -> None:
        self.workdir = workdir
        self.master = RedisServer(data_dir=workdir / "master")
        self.replica = RedisServer(data_dir=workdir / "replica",
                                   extra_args=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.down_after_ms = down_after_ms
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    def redis_yaml(self) -> str:
        """The ``redis:`` entry of a letsfrag config that finds the master through the sentinels."""
        nodes = ", ".join(f'"{n}"' for n in self.nodes)
        return (f"redis:\n  url: {self.master.url}\n  sentinel:\n    master: {MASTER_NAME}\n"
                f"    nodes: [{nodes}]\n")

    def start(self, timeout: float = 20.0) -> None:
        self.master.start()
        self.replica.start()
        for index, port in enumerate(self.sentinel_ports):
            folder = self.workdir / f"sentinel-{index}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.sentinels.append(subprocess.Popen([find_redis_server(), str(conf), "--sentinel"],
                                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            if self._synced():
                return
            time.sleep(0.1)
        raise AssertionError("the sentinel group did not come up (replica in sync, every sentinel sees both)")

    def _synced(self) -> bool:
        try:
            info: Any = redis.Redis(port=self.replica.port, socket_timeout=1).info("replication")
            if info.get("master_link_status") != "up":
                return False
            for port in self.sentinel_ports:
                client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
                state: Any = client.sentinel_master(MASTER_NAME)
                client.close()
                if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < \
                        len(self.sentinel_ports) - 1:
                    return False
            return True
        except (redis.RedisError, OSError):
            return False

    def master_address(self) -> tuple[str, int]:
        """The master the sentinels agree on now (asks the first sentinel that answers)."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError, OSError):
                client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
                address: Any = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                host, master_port = address
                client.close()
                return str(host), int(master_port)
        raise AssertionError("no sentinel answered")

    def master_url(self) -> str:
        host, port = self.master_address()
        return f"redis://{host}:{port}/0"

    def kill_master(self) -> None:
        self.master.kill()

    def promoted(self) -> bool:
        """The replica is the master now (by the sentinels and by itself)."""
        if self.master_address()[1] != self.replica.port:
            return False
        with contextlib.suppress(redis.RedisError, OSError):
            return bool(redis.Redis(port=self.replica.port, socket_timeout=1).info("replication")["role"] == "master")
        return False

    def close(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
        for process in self.sentinels:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.replica.stop()
        self.master.stop()


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False
