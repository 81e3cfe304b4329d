"""The per-role Redis ACL of ``deploy/redis-acl.conf`` against a real redis-server and a real deployment.

The file is loaded as it is documented (only its CHANGE-ME passwords replaced); the broker, the supervisor, its
cluster process and ``letsfrag status`` each connect as their own user. Everything works (every shard READY, no
NOPERM in any log, status answers), and each role is denied what it does not need.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from support.waiting import wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal, RehearsalSettings
from letsfrag.redis_server import RedisServer

# one deployment (a module-scoped fixture) serves these tests: with `--dist loadgroup` they run on one xdist
# worker, in this order, and the deployment starts once
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("test_acl")]

ACL_FILE = Path(__file__).resolve().parents[1] / "deploy" / "redis-acl.conf"
NS = "letsfrag"  # the namespace the documented file is written for
ROLES = ("broker", "host", "cluster", "dashboard")


def acl_text(passwords: dict[str, str]) -> str:
    text = ACL_FILE.read_text()
    for role, password in passwords.items():
        text = text.replace(f">CHANGE-ME-{role} ", f">{password} ")
    assert ">CHANGE-ME" not in text, "a role of the ACL file has no password placeholder of the expected form"
    return text


@dataclass
class AclRehearsal(Rehearsal):
    """A rehearsal whose broker, host, cluster processes and tools connect with their own ACL users."""

    passwords: dict[str, str] = field(default_factory=dict)

    def url(self, role: str) -> str:
        assert self.redis is not None
        return f"redis://letsfrag-{role}:{self.passwords[role]}@127.0.0.1:{self.redis.port}/0"

    @property
    def redis_url(self) -> str:  # what the rehearsal's own readings and tools use: the read-only user
        return self.url("dashboard")

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update({f"{role.upper()}_REDIS_PASSWORD": pw for role, pw in self.passwords.items()})
        return env

    def _entry(self, role: str) -> str:
        assert self.redis is not None
        return (f"redis:\n  url: redis://127.0.0.1:{self.redis.port}/0\n  username: letsfrag-{role}\n"
                f"  password: ${{{role.upper()}_REDIS_PASSWORD}}\n")

    def broker_yaml(self) -> str:
        return super().broker_yaml().replace(f"redis: {self.redis_url}\n", self._entry("broker"), 1)

    def host_yaml(self, host_id: str, capacity: int | None = None) -> str:
        text = super().host_yaml(host_id, capacity).replace(f"redis: {self.redis_url}\n", self._entry("host"), 1)
        return text.replace("bot:\n", "bot:\n  redis_username: letsfrag-cluster\n"
                                      "  redis_password: ${CLUSTER_REDIS_PASSWORD}\n", 1)


def start_acl_redis(workdir: Path, passwords: dict[str, str]) -> RedisServer:
    workdir.mkdir(parents=True, exist_ok=True)
    users = workdir / "letsfrag-acl.conf"
    users.write_text(acl_text(passwords))
    server = RedisServer(data_dir=workdir / "redis", extra_args=["--include", str(users)],
                         probe_user=("letsfrag-dashboard", passwords["dashboard"]))
    server.start()
    return server


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRehearsal]:
    workdir = tmp_path_factory.mktemp("acl")
    passwords = {role: secrets.token_hex(12) for role in ROLES}
    settings = RehearsalSettings(hosts=1, shards=2, shards_per_cluster=1, max_concurrency=2, guilds_per_shard=2,
                                 namespace=NS)
    running = AclRehearsal(settings, workdir, passwords=passwords)
    try:
        running.redis = start_acl_redis(workdir, passwords)
        running.start(redis=False)
        wait_until_sync(running.all_ready, timeout=60, interval=0.25, message="2 shards READY")
        yield running
    finally:
        leftovers = running.close()
        assert leftovers == [], f"processes survived the graceful stop: {leftovers}"


def client_of(deployment: AclRehearsal, role: str) -> redis.Redis:
    return redis.Redis.from_url(deployment.url(role), decode_responses=True)


def denied(call: object) -> bool:
    """True when ``call()`` fails with Redis's NOPERM (an ACL refusal), False when it is allowed."""
    assert callable(call)
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as exc:
        return "NOPERM" in str(exc) or "no permissions" in str(exc)
    return False


def logs(deployment: AclRehearsal) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(Path(deployment.workdir).rglob("*.log")))


def test_every_role_works_with_its_own_user(deployment: AclRehearsal) -> None:
    dashboard = client_of(deployment, "dashboard")
    try:
        def shards_ready() -> bool:  # written by the cluster processes with their own user
            return all('"ready"' in (dashboard.hget(f"{NS}:status:shards:{sid}", str(sid)) or "") for sid in (0, 1))

        wait_until_sync(shards_ready, timeout=20, message="the cluster processes report their shards READY")
        wait_until_sync(lambda: all(dashboard.hget(f"{NS}:status:cluster:{cid}", "state") == "ready"
                                    for cid in (0, 1)), timeout=20, message="the supervisor reports READY")
        assert dashboard.get(f"{NS}:leader") == "b0"
        assert dashboard.get(f"{NS}:identify:granted") is not None  # the clusters went through the queue
    finally:
        dashboard.close()
    status = deployment.letsfrag_cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "ready" in status.stdout
    problems = [line for line in logs(deployment).splitlines() if re.search("NOPERM|no permissions", line)]
    assert problems == [], f"a role lacks a permission it needs: {problems[:5]}"


def test_the_dashboard_user_reads_but_cannot_write_or_publish(deployment: AclRehearsal) -> None:
    client = client_of(deployment, "dashboard")
    try:
        assert client.hgetall(f"{NS}:layout")["shard_count"] == "2"
        assert client.xrevrange(f"{NS}:events", count=1)
        for name, call in {
            "PUBLISH a command to the broker": lambda: client.publish(f"{NS}:cb", "x"),
            "PUBLISH to a host inbox": lambda: client.publish(f"{NS}:cm:h0", "x"),
            "PUBLISH the doorbell": lambda: client.publish(f"{NS}:doorbell", "x"),
            "HSET the assignment": lambda: client.hset(f"{NS}:assignment", "0", "{}"),
            "SET the leader": lambda: client.set(f"{NS}:leader", "evil"),
            "DEL the layout": lambda: client.delete(f"{NS}:layout"),
            "XADD an event": lambda: client.xadd(f"{NS}:events", {"kind": "forged"}),
            "read another namespace": lambda: client.get("other:key"),
            "FLUSHALL": lambda: client.flushall(),
            "CONFIG GET": lambda: client.config_get("requirepass"),
            "KEYS": lambda: client.keys("*"),
        }.items():
            assert denied(call), f"the dashboard user may {name}"
        assert client.hget(f"{NS}:layout", "shard_count") == "2"
    finally:
        client.close()
    assert deployment.redis is not None
    anonymous = redis.Redis(port=deployment.redis.port)
    try:
        with pytest.raises(redis.exceptions.RedisError):  # the default user is off
            anonymous.get(f"{NS}:layout")
    finally:
        anonymous.close()


def test_cluster_and_host_users_are_denied_what_they_do_not_need(deployment: AclRehearsal) -> None:
    cluster, host, broker = (client_of(deployment, role) for role in ("cluster", "host", "broker"))
    try:
        for name, call in {
            "publish a command to the broker": lambda: cluster.publish(f"{NS}:cb", "x"),
            "publish to a host inbox": lambda: cluster.publish(f"{NS}:cm:h0", "x"),
            "write a host record": lambda: cluster.hset(f"{NS}:host:h0", "state", "lost"),
            "write the epoch": lambda: cluster.incr(f"{NS}:epoch"),
            "take the leader lock": lambda: cluster.set(f"{NS}:leader", "evil"),
            "write a cluster's supervisor status": lambda: cluster.hset(f"{NS}:status:cluster:0", "state", "x"),
            "CONFIG SET": lambda: cluster.config_set("appendonly", "no"),
        }.items():
            assert denied(call), f"the cluster user may {name}"
        for name, call in {
            "take the leader lock": lambda: host.set(f"{NS}:leader", "evil"),
            "write a broker role": lambda: host.set(f"{NS}:brokers:evil", "leader"),
            "write the identify queue": lambda: host.set(f"{NS}:identify:seq", "0"),
            "publish on the cluster RPC channels": lambda: host.publish(f"{NS}:broadcast", "x"),
            "FLUSHDB": lambda: host.flushdb(),
        }.items():
            assert denied(call), f"the host user may {name}"
        assert denied(lambda: broker.flushall()) and denied(lambda: broker.get("other:key"))
        # what each role does need, the replay ids of the bus included
        assert not denied(lambda: cluster.set(f"{NS}:replay:acl-test-c", "1", nx=True, px=1000))
        assert not denied(lambda: cluster.set(f"{NS}:claim:MESSAGE_CREATE:1", "0/1", nx=True, px=1000))
        assert denied(lambda: host.set(f"{NS}:claim:MESSAGE_CREATE:2", "x", nx=True, px=1000))
        assert not denied(lambda: cluster.hset(f"{NS}:sessions:0", "0", "{}"))
        assert not denied(lambda: host.set(f"{NS}:replay:acl-test-h", "1", nx=True, px=1000))
        assert not denied(lambda: broker.set(f"{NS}:replay:acl-test-b", "1", nx=True, px=1000))
    finally:
        for client in (cluster, host, broker):
            with contextlib.suppress(Exception):
                client.close()


def test_the_security_doc_shows_the_acl_file_verbatim() -> None:
    doc = (ACL_FILE.parents[1] / "docs" / "security.md").read_text()
    assert f"```\n{ACL_FILE.read_text()}```" in doc, "docs/security.md must quote deploy/redis-acl.conf as it is"
