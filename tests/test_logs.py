"""The secret registry and the log formats: every record masked (message and traceback), one record one line."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from letsfrag.config import HostConfig
from letsfrag.logs import escape_control, mask, mask_value, register_secret, register_secrets_in, setup_logging
from letsfrag.supervisor.launch import register_config_secrets

TOKEN = "log-test-token-Vb93"


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    monkeypatch.setenv("COLUMNS", "400")  # rich: no wrapping inside the asserted text
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield logging.getLogger("letsfrag.test"), io.StringIO()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["plain", "rich", "json"])
def test_a_traceback_quoting_a_secret_is_masked(fmt: str, logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logged
    register_secret(TOKEN)
    setup_logging(0, fmt, stream)
    try:
        raise RuntimeError(f"login failed with {TOKEN} at redis://:hunter22@db:6379/0")
    except RuntimeError:
        log.exception("cluster %s crashed", 3)
    log.warning("stack", stack_info=True, extra={"note": TOKEN})
    text = stream.getvalue()
    assert "Traceback" in text and "cluster 3 crashed" in text
    assert "RuntimeError: login failed with *** at redis://:***@db:6379/0" in text.replace("\\n", "\n")
    assert TOKEN not in text and "hunter22" not in text


@pytest.mark.parametrize("fmt", ["plain", "rich"])
def test_control_characters_in_a_message_cannot_forge_a_line(fmt: str,
                                                             logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logged
    setup_logging(0, fmt, stream)
    log.info("hello from %s", "evil\n2026-01-01 00:00:00 ERROR letsfrag: forged\x1b[2J\x1b]8;;http://x\x07")
    text = stream.getvalue()
    assert len(text.strip().splitlines()) == 1, text
    assert "evil\\n2026-01-01" in text and "\\x1b[2J" in text and "\\x1b]8;;http://x\\x07" in text
    assert "\x1b[2J" not in text and "\x07" not in text


def test_escape_keeps_printable_unicode() -> None:
    assert escape_control("ünïcødé ✓ 漢字\t\r\n\x00\x9b\u202e") == "ünïcødé ✓ 漢字\\t\\r\\n\\x00\\x9b\\u202e"


def test_config_secrets_are_registered_url_password_and_secret_env() -> None:
    config = HostConfig.model_validate({
        "redis": "redis://u:url-pass-Ka81@db:6379/0", "secret": "sign-Jx44", "host": {"id": "h"},
        "bot": {"module": "bot", "token": "tok-Mm20",
                "env": {"OPENAI_API_KEY": "sk-value-Tq55", "DB_PASSWORD": "db-pass-Lo12", "COLOUR": "blue-ish"}},
    })
    register_config_secrets(config)
    line = "url-pass-Ka81 sign-Jx44 tok-Mm20 sk-value-Tq55 db-pass-Lo12 blue-ish"
    assert mask(line) == "*** *** *** *** *** blue-ish"
    register_secrets_in({"redis": {"url": "redis://db", "password": "plain-pw-Rr07"}})
    assert mask_value({"a": ["plain-pw-Rr07", 1]}) == {"a": ["***", 1]}


@pytest.mark.integration
def test_config_check_never_echoes_a_url_password(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(textwrap.dedent("""\
        redis:
          url: redis://user:pw-in-redis-url@db:6379/0
          tls: {verify: false}
        host: {id: h1}
        bot: {module: bot, token: t}
        discord:
          api_url: ftp://user:pw-in-api-url@api.example/v10
          gateway_url: http://user:pw-in-gateway-url@gw.example/
        """))
    done = subprocess.run([sys.executable, "-m", "letsfrag", "config", "check", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done
    out = done.stdout + done.stderr
    assert "discord.api_url: expected an http:// or https:// URL, found 'ftp://user:***@api.example/v10'" in out
    assert "discord.gateway_url: expected a ws:// or wss:// URL, found 'http://user:***@gw.example/'" in out
    assert "redis.tls: needs a rediss:// url" in out
    assert "pw-in" not in out and "Traceback" not in out


def test_a_cluster_process_masks_the_password_inside_letsfrag_redis_url(
        logged: tuple[logging.Logger, io.StringIO]) -> None:
    import discord

    from letsfrag.cluster.client import ClusterShardClient
    from letsfrag.environment import ClusterEnvironment

    sent = ClusterEnvironment(cluster_id=0, shard_ids=(0,), shard_count=1, host_id="h", host_incarnation="i",
                              epoch=1, redis={"url": "redis://:pw-in-url-Hy61@db:6379/0"}, token="tok-cluster-Wq33")
    environ = sent.to_env()
    assert "pw-in-url-Hy61" in environ["LETSFRAG_REDIS_URL"]
    ClusterShardClient(intents=discord.Intents.none(), environment=ClusterEnvironment.from_env(environ))
    log, stream = logged
    setup_logging(0, "plain", stream)
    log.warning("password %s from %s", "pw-in-url-Hy61", environ["LETSFRAG_REDIS_URL"].replace("redis://:", "x "))
    text = stream.getvalue()
    assert "password *** from x ***@db:6379/0" in text and "pw-in-url" not in text
