"""``connection_from_args``: config files of every kind, the embedded URL file, overrides and the secret."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from letsfrag.cli.connect import connection_from_args
from letsfrag.config import RedisSettings
from letsfrag.errors import ConfigError


def _args(**kwargs: object) -> argparse.Namespace:
    base = {"config": None, "redis": None, "namespace": None, "secret_env": "TEST_LF_SECRET"}
    base.update(kwargs)
    return argparse.Namespace(**base)


def test_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_LF_SECRET", raising=False)
    assert connection_from_args(_args()) == ("redis://127.0.0.1:6379/0", "letsfrag", None)
    monkeypatch.setenv("TEST_LF_SECRET", "s3cret-value")
    assert connection_from_args(_args(redis="redis://10.0.0.5:6380/2", namespace="prod")) == (
        "redis://10.0.0.5:6380/2", "prod", "s3cret-value")
    with pytest.raises(ConfigError, match="--redis"):
        connection_from_args(_args(redis="10.0.0.5:6380"))


def test_broker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_LF_SECRET", raising=False)
    path = tmp_path / "broker.yaml"
    path.write_text("redis: redis://db:6379/1\nnamespace: blue\nsecret: from-file\nshards: 8\n")
    redis, namespace, secret = connection_from_args(_args(config=str(path)))
    assert isinstance(redis, RedisSettings) and redis.url == "redis://db:6379/1"
    assert (namespace, secret) == ("blue", "from-file")


def test_local_embedded_reads_the_url_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "local.yaml"
    path.write_text("redis: embedded\nshards: 4\nbot:\n  module: examples.bot\n  token: abc\n"
                    "embedded:\n  dir: state\n")
    with pytest.raises(ConfigError, match="no running `letsfrag run`"):
        connection_from_args(_args(config=str(path)))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "redis.url").write_text("redis://127.0.0.1:41234/0\n")
    assert connection_from_args(_args(config=str(path)))[0] == "redis://127.0.0.1:41234/0"
    assert connection_from_args(_args(config=str(path), redis="redis://x:1/0"))[0] == "redis://x:1/0"


def test_local_embedded_takes_the_per_run_secret_unless_one_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEST_LF_SECRET", raising=False)
    path = tmp_path / "local.yaml"
    path.write_text("shards: 4\nbot:\n  module: examples.bot\n  token: abc\nembedded:\n  dir: state\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "redis.url").write_text("unix:///somewhere/redis.sock\n")
    (tmp_path / "state" / "secret").write_text("generated-per-run\n")
    assert connection_from_args(_args(config=str(path)))[2] == "generated-per-run"
    monkeypatch.setenv("TEST_LF_SECRET", "from-env")
    assert connection_from_args(_args(config=str(path)))[2] == "from-env"
