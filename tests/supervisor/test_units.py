"""Small pieces of the supervisor without Redis: log rotation, layout and grant parsing, launch details."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.supervisor import TOKEN, host_config
from support.waiting import wait_until_sync

from letsfrag.cli.supervise_command import _overrides
from letsfrag.contract.records import LayoutRecord
from letsfrag.environment import ClusterEnvironment
from letsfrag.errors import ConfigError, NotInClusterError
from letsfrag.ipc import ENV_IPC_FD
from letsfrag.supervisor import ClusterState, ClusterView
from letsfrag.supervisor.host import fence_after, parse_assignment
from letsfrag.supervisor.launch import build_argv, build_env, cluster_environment, plain_redis_settings, run_identity
from letsfrag.supervisor.lifecycle import tick_interval
from letsfrag.supervisor.logfile import ClusterLog
from letsfrag.supervisor.publish import status_fields
from letsfrag.supervisor.watch import TreeSampler, descendants

LAYOUT = {"shard_count": "10", "shards_per_cluster": "4", "cluster_count": "3", "max_concurrency": "1",
          "identify_window": "5", "lease_ttl": "10", "lease_grace": "2", "heartbeat_interval": "2"}


def test_log_rotates_at_max_bytes_and_keeps_backups(tmp_path: Path) -> None:
    log = ClusterLog(tmp_path / "cluster-3.log", max_bytes=100, backups=2)
    for i in range(30):
        log.write(f"line {i:03d} ".encode() * 2 + b"\n")
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["cluster-3.log", "cluster-3.log.1", "cluster-3.log.2"]
    assert all((tmp_path / n).stat().st_size <= 100 for n in names)
    assert "line 029" in (tmp_path / "cluster-3.log").read_text()
    assert log.rotations >= 5


def test_log_without_backups_and_big_chunks(tmp_path: Path) -> None:
    log = ClusterLog(tmp_path / "c.log", max_bytes=10, backups=0)
    log.write(b"x" * 35)
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["c.log"]
    assert (tmp_path / "c.log").read_bytes() == b"x" * 5


def test_log_tail_prefers_stderr_lines(tmp_path: Path) -> None:
    log = ClusterLog(tmp_path / "c.log", max_bytes=10_000, backups=1, tail_lines=3)
    log.write(b"out 1\nout 2\n")
    assert log.tail() == ["out 1", "out 2"]
    log.write(b"Traceback\n  File x\nValueEr", stderr=True)
    log.write(b"ror: bad\nlast\n", stderr=True)
    assert log.tail() == ["  File x", "ValueError: bad", "last"]
    log.note("exited")
    assert "--- letsfrag" in (tmp_path / "c.log").read_text()
    log.reset_tail()
    assert log.tail() == []
    log.close()


def test_layout_parsing_names_the_bad_field() -> None:
    layout = LayoutRecord.from_hash(LAYOUT)
    assert layout.shards_of(0) == (0, 1, 2, 3) and layout.shards_of(2) == (8, 9) and layout.shards_of(3) == ()
    with pytest.raises(ValueError, match="'lease_ttl' is missing"):
        LayoutRecord.from_hash({k: v for k, v in LAYOUT.items() if k != "lease_ttl"})
    with pytest.raises(ValueError, match="'shard_count' must be an integer"):
        LayoutRecord.from_hash({**LAYOUT, "shard_count": "many"})


def test_parse_assignment_keeps_only_this_host() -> None:
    data = {"0": json.dumps({"host": "a", "epoch": 3}), "1": json.dumps({"host": "b", "epoch": 4}),
            "2": "not json", "x": json.dumps({"host": "a", "epoch": 1}), "5": json.dumps({"host": "a"}),
            "6": json.dumps({"host": "a", "epoch": 7})}
    assert parse_assignment(data, "a") == {0: 3, 6: 7}


def test_fencing_horizon_and_tick() -> None:
    assert fence_after(10, 2) == 8 and fence_after(3, 0.4) == 2 and fence_after(0.5, 2) == 0
    assert tick_interval(2.0, 30.0) == 1.0 and tick_interval(0.2, 0.4) == pytest.approx(0.1)


def test_status_fields_cover_the_contract() -> None:
    view = ClusterView(cluster_id=3, state=ClusterState.READY, epoch=7, pid=42, shard_ids=(24, 25, 26),
                       restarts=1, reason="ready in 1.0s", started_at=1.0, ready_at=2.0, last_heartbeat=3.0,
                       exit_code=None, exit_signal=None, last_error="", next_restart_at=None, cpu_percent=1.25,
                       rss=1000, threads=4, guilds=10, latency=0.05, spawns=2)
    fields = status_fields(view, "h", 5.0)
    documented = ("cluster_id host epoch state pid shard_ids shard_range restarts started_at ready_at cpu_percent "
                  "rss threads last_heartbeat exit_code exit_signal reason last_error next_restart_at guilds "
                  "latency log_errors updated_at pss uss").split()
    assert set(fields) == set(documented)
    assert fields["shard_range"] == "24–26" and fields["state"] == "ready" and fields["exit_code"] == ""
    assert all(isinstance(v, str) for v in fields.values())


def test_launch_environment_and_argv(tmp_path: Path) -> None:
    config = host_config("redis://:pw-secret@127.0.0.1:1/0", tmp_path, bot={"module": "examples.bot",
                                                                            "command": None})
    argv = build_argv(config)
    assert argv == [sys.executable, "-m", "examples.bot"] and not any(TOKEN in a for a in argv)
    env_model = cluster_environment(config, cluster_id=1, shard_ids=(4, 5), shard_count=8, host_id="h",
                                    incarnation="inc", epoch=9, heartbeat_interval=0.5, lease_ttl=3,
                                    max_concurrency=2, identify_window=5)
    env = build_env(config, env_model, 17, base={"PATH": "/bin", "LETSFRAG_EPOCH": "stale"})
    assert env["LETSFRAG_EPOCH"] == "9" and env["LETSFRAG_SHARD_IDS"] == "4,5" and env[ENV_IPC_FD] == "17"
    assert env["LETSFRAG_TOKEN"] == TOKEN and env["PATH"] == "/bin" and env["STUB_DIR"]
    assert json.loads(env["LETSFRAG_REDIS"])["url"].startswith("redis://:pw-secret@")
    assert "password" not in plain_redis_settings(config)


@pytest.mark.parametrize(("host_allows", "broker_allows"), [(False, False), (True, False), (False, True),
                                                          (True, True)])
def test_cluster_environment_carries_the_bus_settings_and_both_eval_opt_ins(
        tmp_path: Path, host_allows: bool, broker_allows: bool) -> None:
    config = host_config("redis://127.0.0.1:1/0", tmp_path, signature_window="3s", max_message_bytes="4KiB",
                         allow_eval=host_allows, secret="bus-secret")
    model = cluster_environment(config, cluster_id=0, shard_ids=(0,), shard_count=1, host_id="h",
                                incarnation="inc", epoch=1, heartbeat_interval=0.5, lease_ttl=3,
                                max_concurrency=1, identify_window=5, broker_allows_eval=broker_allows)
    env = build_env(config, model, 3, base={})
    assert (env["LETSFRAG_SIGNATURE_WINDOW"], env["LETSFRAG_MAX_MESSAGE_BYTES"]) == ("3.0", "4096")
    assert env["LETSFRAG_ALLOW_EVAL"] == ("1" if host_allows and broker_allows else "0")
    back = ClusterEnvironment.from_env(env)
    assert (back.signature_window, back.max_message_bytes, back.secret) == (3.0, 4096, "bus-secret")
    assert back.allow_eval is (host_allows and broker_allows)
    for name, bad in (("LETSFRAG_SIGNATURE_WINDOW", "0"), ("LETSFRAG_MAX_MESSAGE_BYTES", "lots")):
        with pytest.raises(NotInClusterError, match=name if bad == "0" else "invalid literal"):
            ClusterEnvironment.from_env({**env, name: bad})


def test_the_run_and_its_dead_runs_travel_in_the_environment(tmp_path: Path) -> None:
    config = host_config("redis://127.0.0.1:1/0", tmp_path)
    common: dict[str, Any] = dict(cluster_id=0, shard_ids=(0,), shard_count=1, host_id="h", incarnation="inc",
                                  epoch=1, heartbeat_interval=0.5, lease_ttl=3, max_concurrency=1, identify_window=5)
    model = cluster_environment(config, **common, run=run_identity("ab12", 3),
                                dead_runs=(run_identity("ab12", 1), run_identity("ab12", 2)))
    env = build_env(config, model, 3, base={})
    assert (env["LETSFRAG_RUN"], env["LETSFRAG_DEAD_RUNS"]) == ("ab12.3", "ab12.1,ab12.2")
    back = ClusterEnvironment.from_env(env)
    assert (back.run, back.dead_runs) == ("ab12.3", ("ab12.1", "ab12.2"))
    first = build_env(config, cluster_environment(config, **common, run="ab12.1"), 3, base={})
    assert "LETSFRAG_DEAD_RUNS" not in first and ClusterEnvironment.from_env(first).dead_runs == ()
    older = {k: v for k, v in env.items() if k not in ("LETSFRAG_RUN", "LETSFRAG_DEAD_RUNS")}  # an older supervisor
    assert (ClusterEnvironment.from_env(older).run, ClusterEnvironment.from_env(older).dead_runs) == ("", ())
    with pytest.raises(NotInClusterError, match="LETSFRAG_RUN"):
        ClusterEnvironment.from_env({**env, "LETSFRAG_DEAD_RUNS": "ab12.1,a b"})


def test_cluster_processes_may_get_their_own_redis_user(tmp_path: Path) -> None:
    config = host_config("redis://127.0.0.1:1/0", tmp_path, redis={"url": "redis://127.0.0.1:1/0",
                         "username": "letsfrag-host", "password": "host-pw"},
                         bot={"module": "examples.bot", "command": None, "redis_username": "letsfrag-cluster",
                              "redis_password": "cluster-pw"})
    assert plain_redis_settings(config) == {"url": "redis://127.0.0.1:1/0", "username": "letsfrag-cluster",
                                                 "password": "cluster-pw"}
    with pytest.raises(ValueError, match=r"needs bot\.redis_username"):
        host_config("redis://127.0.0.1:1/0", tmp_path, bot={"redis_password": "orphan"})


def test_layout_reads_the_brokers_eval_opt_in() -> None:
    fields = {"shard_count": "2", "shards_per_cluster": "2", "cluster_count": "1", "max_concurrency": "1",
              "identify_window": "5", "lease_ttl": "3", "lease_grace": "1", "heartbeat_interval": "1"}
    assert LayoutRecord.from_hash(fields).allow_eval is False  # a broker that does not write the field: off
    assert LayoutRecord.from_hash({**fields, "allow_eval": "0"}).allow_eval is False
    assert LayoutRecord.from_hash({**fields, "allow_eval": "1"}).allow_eval is True


def test_supervise_overrides_are_checked() -> None:
    assert _overrides(argparse.Namespace(host_id="web-1", capacity=2)) == ("web-1", 2)
    with pytest.raises(ConfigError, match="--host-id"):
        _overrides(argparse.Namespace(host_id="bad id!", capacity=None))
    with pytest.raises(ConfigError, match="--capacity"):
        _overrides(argparse.Namespace(host_id=None, capacity=-1))


@pytest.mark.integration
def test_sampler_sees_children_of_a_tree() -> None:
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']);" \
           " time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        sampler = TreeSampler()
        kids = wait_until_sync(lambda: descendants(parent.pid), timeout=5, message="the grandchild")
        assert len(kids) == 1
        sample = sampler.sample({7: parent.pid})[7]
        assert sample.pids == (parent.pid, kids[0]) and sample.rss > 0 and sample.threads >= 2
        assert sampler.sample({7: 999_999_999}) == {}
    finally:
        for pid in descendants(parent.pid):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.kill()
        parent.wait()
