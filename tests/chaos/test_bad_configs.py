"""Invalid configs and wrong Redis credentials: exit 2, the key path named, no traceback, nothing started.

Every case is run through every command that takes that kind of config (``broker``/``supervise``/``run``,
``config check``, ``status -c``) in this process, through :func:`letsfrag.cli.main.main`
(``support.cli.main_in_process``: what ``python -m letsfrag`` calls, the same parsing, handler and error
printing). A few of them (:data:`SUBPROCESS_CASES`: one per kind of config, the deep nesting that could overflow
a real process's stack among them) also run as real subprocesses, all at once. The configs point at a private
Redis, so "nothing started" is checked twice: the Redis stays empty and no process runs the config afterwards
(in this process: no child is left).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis
from support.cli import main_in_process
from support.exactly_once import SecuredRehearsal, deployment_factory, letsfrag_cli
from support.waiting import wait_until_sync

from letsfrag.redis_server import RedisServer

# one redis-server (a module-scoped fixture) serves these tests: with `--dist loadgroup` they run on one xdist
# worker, in this order, and the server starts once
pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("test_bad_configs")]

BROKER_OK = "shards: 4\nshards_per_cluster: 2\nmax_concurrency: 1\n"
HOST_OK = "host:\n  id: h0\n  capacity: 2\nbot:\n  module: examples.bot\n  token: t0ken\n"
LOCAL_OK = BROKER_OK + HOST_OK


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # broker, host or local
    body: str  # YAML after the "redis:" line
    path: str  # what stderr must name


CASES = [
    # broker configs
    Case("unknown-key", "broker", BROKER_OK + "shardz: 4\n", "shardz"),
    Case("shards-negative", "broker", "shards: -4\nshards_per_cluster: 2\n", "shards"),
    Case("shards-not-a-number", "broker", "shards: many\nshards_per_cluster: 2\n", "shards"),
    Case("per-cluster-zero", "broker", "shards: 4\nshards_per_cluster: 0\n", "shards_per_cluster"),
    Case("lease-ttl-not-duration", "broker", BROKER_OK + "lease:\n  ttl: soon\n", "lease.ttl"),
    Case("lease-unknown-nested", "broker", BROKER_OK + "lease:\n  tll: 3s\n", "lease: unknown key 'tll'"),
    Case("rebalance-bad-choice", "broker", BROKER_OK + "rebalance: sometimes\n", "rebalance"),
    Case("hosts-expected-list", "broker", BROKER_OK + "hosts:\n  expected: [1, 2]\n", "hosts.expected"),
    Case("namespace-with-space", "broker", BROKER_OK + "namespace: 'my ns'\n", "namespace"),
    Case("max-message-bytes-bad", "broker", BROKER_OK + "max_message_bytes: lots\n", "max_message_bytes"),
    Case("missing-env-var", "broker", BROKER_OK + "secret: ${LETSFRAG_NO_SUCH_VAR_XYZ}\n", "secret"),
    Case("inf-duration", "broker", BROKER_OK + "lease:\n  ttl: .inf\n", "lease.ttl"),
    Case(
        "alias-bomb",
        "broker",
        BROKER_OK + "x0: &x0 [a, a, a, a, a, a, a, a, a, a]\n"
        + "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]\n" for i in range(1, 7)),
        "aliases expand it to more than 10000 values",
    ),
    Case("deep-nesting", "broker", BROKER_OK + "x: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested deeper"),
    # host configs
    Case("capacity-yes", "host", HOST_OK.replace("capacity: 2", "capacity: yes"), "host.capacity"),
    Case("env-unquoted-on", "host", HOST_OK + "  env: {DEBUG: on}\n", "bot.env.DEBUG"),
    Case("host-capacity-negative", "host", HOST_OK.replace("capacity: 2", "capacity: -1"), "host.capacity"),
    Case("host-unknown-key", "host", HOST_OK + "hots: 1\n", "hots"),
    Case("bot-both-module-and-command", "host", HOST_OK + "  command: [python, bot.py]\n", "bot"),
    Case("restart-policy-bad", "host", HOST_OK + "restart:\n  policy: sometimes\n", "restart.policy"),
    Case(
        "backoff-initial-negative",
        "host",
        HOST_OK + "restart:\n  backoff:\n    initial: -1s\n",
        "restart.backoff.initial",
    ),
    Case("limits-memory-not-size", "host", HOST_OK + "limits:\n  max_memory: huge\n", "limits.max_memory"),
    Case("logs-backups-string", "host", HOST_OK + "logs:\n  backups: many\n", "logs.backups"),
    Case("sample-interval-zero", "host", HOST_OK + "sample_interval: 0s\n", "sample_interval"),
    Case("discord-api-not-url", "host", HOST_OK + "discord:\n  api_url: not a url\n", "discord.api_url"),
    # local configs (both roles)
    Case("local-shards-string", "local", LOCAL_OK.replace("shards: 4", "shards: four"), "shards"),
    Case(
        "local-unknown-nested", "local", LOCAL_OK + "embedded:\n  prot: 0\n", "embedded: unknown key 'prot'"
    ),
    Case("local-lease-grace-negative", "local", LOCAL_OK + "lease:\n  grace: -2s\n", "lease.grace"),
    Case(
        "local-bot-token-missing-env",
        "local",
        LOCAL_OK.replace("t0ken", "${LETSFRAG_NO_SUCH_TOKEN}"),
        "bot.token",
    ),
]

COMMANDS = {
    "broker": [["broker"], ["config", "check"], ["status", "-c"]],
    "host": [["supervise"], ["config", "check"], ["status", "-c"]],
    "local": [["run", "--no-progress"], ["config", "check"], ["status", "-c"]],
}

#: the cases also run as real subprocesses: one per kind, the deep nesting (a real process's C stack) among them
SUBPROCESS_CASES = [case for case in CASES if case.name in {"deep-nesting", "env-unquoted-on",
                                                            "local-bot-token-missing-env"}]


@pytest.fixture(scope="module")
def empty_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(data_dir=tmp_path_factory.mktemp("bad-configs-redis"))
    server.start()
    yield server
    server.cleanup()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in proc.info["cmdline"] or []):
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _write(case: Case, redis_url: str, tmp_path: Path) -> Path:
    config = tmp_path / f"{case.kind}-{case.name}.yaml"
    config.write_text(f"redis: {redis_url}\n{case.body}")
    return config


def _assert_clear_error(case: Case, argv: list[str], code: object, out: str, err: str) -> None:
    label = f"letsfrag {' '.join(argv)} {case.name}"
    assert code == 2, f"{label}: exit {code}\n{out}\n{err}"
    assert case.path in err, f"{label}: stderr does not name {case.path!r}:\n{err}"
    assert "Traceback" not in out + err, f"{label} printed a traceback:\n{err}"
    assert err.strip(), label


def _assert_nothing_started(config: Path, redis_url: str, tmp_path: Path) -> None:
    assert _processes_mentioning(str(config)) == [], "a process was left running"
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0, f"keys were written: {client.keys('*')[:10]}"
    finally:
        client.close()
    assert not (tmp_path / ".letsfrag").exists() and not (tmp_path / "logs").exists(), "nothing was created"


def _without_test_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("LETSFRAG_NO_SUCH")] + ["LETSFRAG_SECRET"]:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_invalid_config_exits_2_naming_the_key(
    case: Case, empty_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    config = _write(case, empty_redis.url, tmp_path)
    _without_test_variables(monkeypatch)
    monkeypatch.chdir(tmp_path)
    children = set(psutil.Process().children(recursive=True))  # the Redis of the module
    for argv in COMMANDS[case.kind]:
        capfd.readouterr()
        code = main_in_process(["--log-format", "plain", *argv, str(config)])
        out, err = capfd.readouterr()
        _assert_clear_error(case, argv, code, out, err)
    left = set(psutil.Process().children(recursive=True)) - children
    assert not left, f"a child process was left running: {left}"
    _assert_nothing_started(config, empty_redis.url, tmp_path)


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.name for c in SUBPROCESS_CASES])
def test_invalid_config_exits_2_naming_the_key_in_a_real_process(
    case: Case, empty_redis: RedisServer, tmp_path: Path
) -> None:
    config = _write(case, empty_redis.url, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETSFRAG_NO_SUCH")}
    env.pop("LETSFRAG_SECRET", None)
    runs = [
        (
            argv,
            subprocess.Popen(
                [sys.executable, "-m", "letsfrag", "--log-format", "plain", *argv, str(config)],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for argv in COMMANDS[case.kind]
    ]
    for argv, process in runs:
        out, err = process.communicate(timeout=60)
        _assert_clear_error(case, argv, process.returncode, out, err)
    _assert_nothing_started(config, empty_redis.url, tmp_path)


# --------------------------------------------------------------------------------------- Redis ACL


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[..., SecuredRehearsal]]:
    yield from deployment_factory(tmp_path)


def test_redis_acl_user_works_and_a_wrong_password_is_a_clear_error(
    deploy: Callable[..., SecuredRehearsal], tmp_path: Path
) -> None:
    password = "s3cret-Redis-pw"
    deployment = deploy(
        hosts=1, shards=4, shards_per_cluster=2, redis_username="letsfrag", redis_password=password
    ).start()
    wait_until_sync(
        deployment.all_ready, timeout=60, interval=0.25, message="4 shards READY through the ACL user"
    )
    assert password not in (deployment.workdir / "broker.yaml").read_text()
    assert deployment.redis is not None
    url = f"redis://127.0.0.1:{deployment.redis.port}/0"
    # the right user through the config: status works and shows READY
    good = tmp_path / "good.yaml"
    good.write_text(
        f"redis:\n  url: {url}\n  username: letsfrag\n  password: ${{REDIS_PASSWORD}}\n"
        f"namespace: {deployment.settings.namespace}\n" + BROKER_OK
    )
    env = {"REDIS_PASSWORD": password, "LETSFRAG_SECRET": deployment.secret}
    wait_until_sync(
        lambda: letsfrag_cli("status", "-c", str(good), env=env).returncode == 0,
        timeout=30,
        interval=0.5,
        message="letsfrag status through the ACL user: exit 0 (all READY)",
    )
    # a wrong password: one clear line, exit 2, the password never printed, nothing started
    wrong_password = "wrong-Redis-pw"
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text())
    host = tmp_path / "bad-host.yaml"
    host.write_text(bad.read_text().replace(BROKER_OK, HOST_OK))
    for argv in (
        ["status", "-c", str(bad)],
        ["broker", str(bad), "--broker-id", "bx"],
        ["supervise", str(host)],
    ):
        done = letsfrag_cli(*argv, env={"REDIS_PASSWORD": wrong_password}, timeout=60)
        output = done.stdout + done.stderr
        assert done.returncode == 2, f"{argv[0]}: exit {done.returncode}\n{output}"
        assert "Traceback" not in output, output
        assert wrong_password not in output and password not in output, output
        errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and ("auth" in errors[0].lower() or "password" in errors[0].lower()), output
    client = deployment.redis_client()
    try:
        assert client.get(f"{deployment.settings.namespace}:leader") == "b0", "the failed broker took nothing"
    finally:
        client.close()
