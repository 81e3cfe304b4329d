"""Config loading: every bad input gives clear one-line problems; examples load; secrets never leak."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from support.waiting import scaled

import letsfrag.config as config_module
from letsfrag.config import (
    BrokerConfig,
    HostConfig,
    LocalConfig,
    RedisSettings,
    check_config_file,
    config_reference_markdown,
    detect_kind,
    load_broker_config,
    load_config_file,
    load_host_config,
    load_local_config,
)
from letsfrag.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HOST_OK = "bot:\n  module: examples.bot\n  token: t0ken-value\n"
ENV = {"BOT_TOKEN": "real-token-value"}


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path, loader=load_config_file, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loader(path, env=env if env is not None else {})
    assert str(info.value) == "\n".join(info.value.problems)
    return [line.replace(str(path), "F") for line in info.value.problems]


# ------------------------------------------------------------------------------------------- bad inputs

BAD_INPUTS = [
    ("wrong type", HOST_OK + "host:\n  capacity: lots\n",
     "F:5: host.capacity: expected a whole number, found 'lots'"),
    ("unknown key with suggestion", HOST_OK + "restrat: {}\n",
     "F:4: unknown key 'restrat' (did you mean 'restart'?)"),
    ("nested unknown key", HOST_OK + "restart:\n  polcy: never\n",
     "F:5: restart: unknown key 'polcy' (did you mean 'policy'?)"),
    ("unset variable", "bot:\n  module: m\n  token: ${NOT_SET_ANYWHERE}\n",
     "F:3: bot.token: environment variable NOT_SET_ANYWHERE is not set (set it, or write "
     "${NOT_SET_ANYWHERE:-default})"),
    ("bad duration", HOST_OK + "limits:\n  hang_timeout: soon\n",
     "F:5: limits.hang_timeout: expected a duration like 500ms, 10s or 5m, found 'soon'"),
    ("bad size", HOST_OK + "limits:\n  max_memory: 12 bananas\n",
     "F:5: limits.max_memory: expected a size like 512MiB or 2GiB, found '12 bananas'"),
    ("negative capacity", HOST_OK + "host:\n  capacity: -1\n",
     "F:5: host.capacity: expected a number >= 0, found -1"),
    ("factor below one", HOST_OK + "restart:\n  backoff:\n    factor: 0.5\n",
     "F:6: restart.backoff.factor: expected a number >= 1, found 0.5"),
    ("both command and module", "bot:\n  module: m\n  command: [python, b.py]\n  token: t\n",
     "F:1: bot: expected exactly one of command or module, found both"),
    ("neither command nor module", "bot:\n  token: t\n",
     "F:1: bot: expected exactly one of command or module, found neither"),
    ("heartbeat too slow for lease", "shards: 4\nlease:\n  ttl: 10s\nheartbeat_interval: 5s\n",
     "F:4: heartbeat_interval: expected less than lease.ttl / 2 = 5s (hosts renew at least twice per lease), "
     "found 5s"),
    ("bad namespace", "shards: 4\nnamespace: 'my bot'\n",
     "F:2: namespace: expected letters, digits, '_', '.' or '-' only, found 'my bot'"),
    ("bad redis scheme", "shards: 4\nredis: http://127.0.0.1:6379\n",
     "F:2: redis.url: expected a URL starting with redis://, rediss:// or unix://, found 'http://127.0.0.1:6379'"),
    ("auto shards need a token", "shards: auto\n",
     "F: token: required key is missing: shards is 'auto' (set token, or give a number)"),
    ("missing bot token", "bot:\n  module: m\n", "F:1: bot.token: required key is missing"),
    ("empty bot token", "bot:\n  module: m\n  token: ''\n",
     "F:3: bot.token: expected a non-empty value, found an empty string"),
    ("bad policy", HOST_OK + "restart:\n  policy: sometimes\n",
     "F:5: restart.policy: expected 'always', 'on-failure' or 'never', found 'sometimes'"),
    ("tls without rediss", "shards: 1\nredis:\n  url: redis://h:1/0\n  tls: {verify: false}\n",
     "F:4: redis.tls: needs a rediss:// url, found url 'redis://h:1/0'"),
    ("bad sentinel node", "shards: 1\nredis:\n  sentinel:\n    master: m\n    nodes: [a:1, nope]\n",
     "F:5: redis.sentinel.nodes[1]: expected host:port, found 'nope'"),
    ("duplicate key", "shards: 1\nshards: 2\n", "F:2: duplicate key 'shards' on lines 1 and 2"),
    ("malformed variable", "shards: 1\nbroker_id: ${oops\n",
     "F:2: broker_id: malformed variable reference: expected ${NAME} or ${NAME:-default}"),
    ("bad module path", "bot:\n  module: my-bot.py/x\n  token: t\n",
     "F:2: bot.module: expected a Python module path like examples.bot, found 'my-bot.py/x'"),
    ("bad gateway url", "shards: 1\ndiscord:\n  gateway_url: http://x/\n",
     "F:3: discord.gateway_url: expected a ws:// or wss:// URL, found 'http://x/'"),
    ("backoff max below initial", HOST_OK + "restart:\n  backoff: {initial: 10s, max: 5s}\n",
     "F:5: restart.backoff.max: expected at least initial (10s), found 5s"),
    ("mapping expected", "shards: 1\nlease: 10s\n", "F:2: lease: expected a mapping, found '10s'"),
    ("infinite duration", "shards: 1\nlease: {ttl: .inf}\n",
     "F:2: lease.ttl: expected a duration like 500ms, 10s or 5m (a finite number), found inf"),
    ("nan duration", "shards: 1\nleader_ttl: .nan\n",
     "F:2: leader_ttl: expected a duration like 500ms, 10s or 5m (a finite number), found nan"),
    ("infinite number", HOST_OK + "restart:\n  backoff: {factor: .inf}\n",
     "F:5: restart.backoff.factor: expected a finite number, found inf"),
    ("redis port out of range", "shards: 1\nredis: redis://h:99999/0\n",
     "F:2: redis.url: expected a port from 1 to 65535 after the host (redis://host:6379/0), found 'redis://h:99999/0'"),
    ("redis port not a number", "shards: 1\nredis: redis://h:abc/0\n",
     "F:2: redis.url: expected a port from 1 to 65535 after the host (redis://host:6379/0), found 'redis://h:abc/0'"),
    ("redis database not a number", "shards: 1\nredis: redis://h:6379/zero\n",
     "F:2: redis.url: expected a database number after the host (redis://host:6379/0), found 'redis://h:6379/zero'"),
    ("unix url without path", "shards: 1\nredis: 'unix://'\n",
     "F:2: redis.url: expected a socket path like unix:///run/redis.sock, found 'unix://'"),
    ("yes is not a count", HOST_OK + "host:\n  capacity: yes\n",
     "F:5: host.capacity: expected a whole number, found true (YAML reads the unquoted yes as the boolean true)"),
    ("on is not a number", HOST_OK + "restart:\n  backoff: {jitter: on}\n",
     "F:5: restart.backoff.jitter: expected a number, found true (YAML reads the unquoted on as the boolean true)"),
    ("1 is not a flag", "shards: 1\nallow_eval: 1\n", "F:2: allow_eval: expected true or false, found 1"),
    ("quoted yes is not a flag", "shards: 1\nallow_eval: 'yes'\n",
     "F:2: allow_eval: expected true or false, found 'yes'"),
    ("env value read as a boolean", HOST_OK + "  env: {DEBUG: on}\n",
     "F:4: bot.env.DEBUG: YAML reads the unquoted on as the boolean true, expected a string; quote it: DEBUG: 'on'"),
    ("env value read as octal", HOST_OK + "  env:\n    PIN: 01234\n",
     "F:5: bot.env.PIN: YAML reads the unquoted 01234 as the number 668, expected a string; quote it: PIN: '01234'"),
    ("env value read as a float", HOST_OK + "  env:\n    RATE: 1.0e+3\n",
     "F:5: bot.env.RATE: YAML reads the unquoted 1.0e+3 as the number 1000.0, expected a string; "
     "quote it: RATE: '1.0e+3'"),
    ("env value empty", HOST_OK + "  env:\n    EMPTY:\n",
     "F:5: bot.env.EMPTY: the value is empty (YAML reads it as null), expected a string; "
     "write EMPTY: '' for an empty string"),
    ("unquoted number as a string key", "shards: 1\nnamespace: 2024\n",
     "F:2: namespace: YAML reads the unquoted 2024 as the number 2024, expected a string; quote it: namespace: '2024'"),
]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gives_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    assert problems(write(tmp_path, text)) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "F: the file is empty, expected a mapping of settings"),
        ("# only a comment\n", "F: the file is empty, expected a mapping of settings"),
        ("- a\n- b\n", "F:1: expected a mapping of settings at the top level, found a list"),
        ("just words\n", "F:1: expected a mapping of settings at the top level, found 'just words'"),
        ("shards: 4\nlease:\n  ttl: [1,\n",
         "F:4: YAML syntax error: expected the node content, but found '<stream end>'"),
        ("shards: 4\n  bad: indent\n", "F:2: YAML syntax error: mapping values are not allowed here"),
    ],
    ids=["empty", "comment-only", "top-level-list", "top-level-scalar", "unclosed-list", "bad-indent"],
)
def test_unusable_documents(tmp_path: Path, text: str, expected: str) -> None:
    assert problems(write(tmp_path, text)) == [expected]


def test_embedded_redis_only_in_local_config(tmp_path: Path) -> None:
    path = write(tmp_path, HOST_OK + "redis: embedded\n")
    assert problems(path, load_host_config) == [
        "F:4: redis: 'embedded' is only allowed in a local config (letsfrag run); expected a redis://, "
        "rediss:// or unix:// URL, found 'embedded'",
        "F: hint: this looks like a local config, not a host config",
    ]
    assert problems(write(tmp_path, "shards: 2\nredis: embedded\n")) == [
        "F:2: redis: 'embedded' is only allowed in a local config (letsfrag run); expected a redis://, "
        "rediss:// or unix:// URL, found 'embedded'"
    ]
    assert load_local_config(write(tmp_path, HOST_OK + "redis: embedded\n"), env={}).redis.embedded


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == ["F: no such file"]
    assert check_config_file(tmp_path) == (2, f"{tmp_path}: is a directory, expected a YAML file")


def test_every_problem_is_reported_in_one_go(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        host:
          capacity: many
          colour: blue
        bot:
          module: examples.bot
          token: ${MISSING_TOKEN_VAR}
        """)
    assert problems(path) == [
        "F:2: host.capacity: expected a whole number, found 'many'",
        "F:3: host: unknown key 'colour'",
        "F:6: bot.token: environment variable MISSING_TOKEN_VAR is not set "
        "(set it, or write ${MISSING_TOKEN_VAR:-default})",
    ]
    code, text = check_config_file(path, env={})
    assert code == 2
    assert len(text.splitlines()) == 3


def test_loading_the_wrong_kind_hints_at_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, HOST_OK)
    assert problems(path, load_broker_config) == [
        "F:1: unknown key 'bot'",
        "F: hint: this looks like a host config, not a broker config",
    ]


def test_secrets_never_appear_in_problems(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        shards: 1
        secret: [hunter2]
        redis:
          url: http://user:hunter2@h:1/0
          password: {p: hunter2}
        token: 12345
        """)
    lines = problems(path)
    assert "hunter2" not in "\n".join(lines) and "12345" not in "\n".join(lines)
    assert "F:2: secret: expected a string, found ***" in lines
    assert "F:6: token: YAML reads the unquoted value as a number, expected a string; quote it" in lines
    assert "F:4: redis.url: expected a URL starting with redis://, rediss:// or unix://, found " \
           "'http://user:***@h:1/0'" in lines


# --------------------------------------------------------------------------------------- examples, check


@pytest.mark.parametrize(("name", "model"), [("broker", BrokerConfig), ("host", HostConfig), ("local", LocalConfig)])
def test_example_configs_load_and_check(name: str, model: type) -> None:
    path = ROOT / "configs" / f"{name}.yaml"
    config = load_config_file(path, env=ENV)
    assert type(config) is model
    code, text = check_config_file(path, env=ENV)
    assert code == 0, text
    assert text.splitlines()[0] == f"{path}: valid {name} config"
    assert "real-token-value" not in text
    effective = yaml.safe_load(text.split("\n", 1)[1])
    assert effective == config.masked_dict()


def test_example_values() -> None:
    broker = load_broker_config(ROOT / "configs/broker.yaml", env={})
    assert (broker.shards, broker.max_concurrency, broker.token) == (16, 1, None)
    host = load_host_config(ROOT / "configs/host.yaml", env=ENV)
    assert host.bot.module == "letsfrag.samples.bot" and host.bot.token.get_secret_value() == "real-token-value"
    assert host.restart.backoff.reset_after == 600.0 and host.logs.max_bytes == 10 * 1024 * 1024
    local = load_local_config(ROOT / "configs/local.yaml", env={})
    assert local.redis.embedded and (local.shards, local.shards_per_cluster) == (8, 4)
    assert local.bot.token.get_secret_value() == "simulated-token"
    assert local.discord.api_url is None and local.discord.gateway_url is None


def test_host_example_needs_bot_token() -> None:
    assert check_config_file(ROOT / "configs/host.yaml", env={})[0] == 2


def test_secrets_are_masked(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        redis:
          url: redis://alice:urlpass@redis.example:6379/1
          password: redispass
          sentinel: {master: m, nodes: ["s1:26379"], password: sentpass}
        secret: hmackey
        bot:
          command: python bot.py --fast
          token: bottoken
          env: {API_KEY: apikey, LOG_LEVEL: debug, WORKERS: "4"}
        """)
    config = load_host_config(path, env={})
    masked = config.masked_dict()
    assert masked["bot"]["token"] == "***" and masked["secret"] == "***"
    assert masked["redis"]["password"] == "***" and masked["redis"]["sentinel"]["password"] == "***"
    assert masked["redis"]["url"] == "redis://alice:***@redis.example:6379/1"
    assert masked["bot"]["env"] == {"API_KEY": "***", "LOG_LEVEL": "debug", "WORKERS": "4"}
    assert masked["bot"]["command"] == ["python", "bot.py", "--fast"]
    code, text = check_config_file(path, env={})
    assert code == 0
    for secret in ("urlpass", "redispass", "sentpass", "hmackey", "bottoken", "apikey"):
        assert secret not in text and secret not in str(masked) and secret not in repr(config)
    assert config.bot.token.get_secret_value() == "bottoken"


# ------------------------------------------------------------------------------------------ variables


def test_variables_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        shards: ${SHARDS}
        namespace: ${NS:-fallback}
        broker_id: ${A}-${B:-b}-$${literal}
        lease: {ttl: "${TTL:-20s}"}
        token: ${EMPTY:-}
        """)
    config = load_broker_config(path, env={"SHARDS": "12", "A": "a", "EMPTY": ""})
    assert config.shards == 12 and config.namespace == "fallback"
    assert config.broker_id == "a-b-${literal}"
    assert config.lease.ttl == 20.0 and config.token is None
    config = load_broker_config(path, env={"SHARDS": "3", "A": "x", "B": "y", "NS": "ns1", "TTL": "1m"})
    assert (config.namespace, config.broker_id, config.lease.ttl) == ("ns1", "x-y-${literal}", 60.0)


def test_environment_is_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETSFRAG_TEST_SHARDS", "7")
    assert load_broker_config(write(tmp_path, "shards: ${LETSFRAG_TEST_SHARDS}\n")).shards == 7


# ------------------------------------------------------------------------------------------ models, kinds


def test_defaults_and_units() -> None:
    broker = BrokerConfig(shards=4, heartbeat_interval="500ms", max_message_bytes="2MiB")
    assert broker.heartbeat_interval == 0.5 and broker.max_message_bytes == 2 * 1024 * 1024
    assert broker.redis.url == "redis://127.0.0.1:6379/0" and not broker.redis.embedded
    assert (broker.namespace, broker.signature_window, broker.allow_eval) == ("letsfrag", 30.0, False)
    assert (broker.lease.ttl, broker.lease.grace, broker.rebalance) == (10.0, 2.0, "on-join")
    assert BrokerConfig(shards="auto", token="x").shards == "auto"
    host = HostConfig(bot={"module": "m", "token": "t"})
    assert host.host.capacity == 4 and host.host.id and host.restart.policy == "always"
    assert host.limits.max_memory is None and host.restart.backoff.jitter == 0.2


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ({"shards": 4}, "broker"),
        ({}, "broker"),
        ({"bot": {}}, "host"),
        ({"host": {"capacity": 1}}, "host"),
        ({"bot": {}, "shards": 8}, "local"),
        ({"bot": {}, "lease": {}}, "local"),
        ({"bot": {}, "redis": "embedded"}, "local"),
        ({"bot": {}, "embedded": {}}, "local"),
    ],
)
def test_detect_kind(data: dict, kind: str) -> None:
    assert detect_kind(data) == kind


def test_local_config_splits_into_broker_and_host() -> None:
    local = LocalConfig(bot={"module": "m", "token": "bt"}, shards="auto", namespace="n1", lease={"ttl": 20})
    assert local.redis.embedded and local.embedded.port == 0
    broker = local.broker_config()
    assert broker.token is not None and broker.token.get_secret_value() == "bt"
    assert (broker.namespace, broker.lease.ttl, broker.shards) == ("n1", 20.0, "auto")
    host = local.host_config(redis="redis://127.0.0.1:7000/0")
    assert host.bot.module == "m" and host.redis.url == "redis://127.0.0.1:7000/0" and not host.redis.embedded
    assert local.broker_config(redis=RedisSettings(url="unix:///tmp/r.sock")).redis.url == "unix:///tmp/r.sock"
    assert LocalConfig(bot={"module": "m", "token": "bt"}, token="own").broker_config().token.get_secret_value() \
        == "own"


def test_redis_settings_client_kwargs_and_display() -> None:
    plain = RedisSettings(url="redis://:inline@h:1/0")
    assert plain.client_kwargs() == {} and plain.display_url() == "redis://:***@h:1/0"
    tls = RedisSettings(url="rediss://h:6380/0", username="u", password="p",
                        tls={"ca_file": "/ca.pem", "verify": False})
    assert tls.client_kwargs() == {"username": "u", "password": "p", "ssl_cert_reqs": "none",
                                   "ssl_check_hostname": False, "ssl_ca_certs": "/ca.pem"}
    sentinel = RedisSettings(sentinel={"master": "mm", "nodes": ["a:26379", "b:26380"]})
    assert sentinel.display_url() == "sentinel://a:26379,b:26380/mm"
    assert sentinel.sentinel is not None and sentinel.sentinel.addresses() == [("a", 26379), ("b", 26380)]
    assert RedisSettings.for_embedded().display_url() == "embedded"


def test_redis_client_kwargs_are_accepted_by_redis_py() -> None:
    from redis.asyncio import Redis

    settings = RedisSettings(url="rediss://127.0.0.1:6380/0", password="p", tls={"verify": False})
    client = Redis.from_url(settings.url, **settings.client_kwargs())
    assert client.connection_pool.connection_kwargs["password"] == "p"


# ------------------------------------------------------------------------------------------------ docs


def test_docs_reference_is_up_to_date() -> None:
    expected = config_reference_markdown()
    assert (ROOT / "docs" / "config.md").read_text() == expected, "regenerate docs/config.md"


def test_reference_lists_every_key() -> None:
    text = config_reference_markdown()
    for key in ("redis.sentinel.nodes", "restart.backoff.reset_after", "heartbeat_interval", "embedded.port",
                "bot.token", "identify_reserve", "discord.gateway_url"):
        assert f"| `{key}` |" in text
    assert "| `lease.ttl` | duration > 0 | `10s` |" in text
    assert "| `logs.max_bytes` | size ≥ 1 | `10MiB` |" in text


def test_public_interface() -> None:
    for name in ("BrokerConfig", "HostConfig", "LocalConfig", "RedisSettings", "load_broker_config",
                 "load_host_config", "load_local_config", "load_config_file", "check_config_file",
                 "Duration", "Size", "detect_kind", "config_reference_markdown"):
        assert name in config_module.__all__ and hasattr(config_module, name)
    assert all(hasattr(config_module, name) for name in config_module.__all__)


# ------------------------------------------------------------------------------- hostile YAML documents


def _alias_bomb(levels: int) -> str:
    text = 'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]\n'
    for level in range(1, levels):
        text += f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]\n"
    return text


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    import time

    path = write(tmp_path, _alias_bomb(7))  # 10**7 strings once expanded
    started = time.monotonic()
    assert problems(path) == [
        "F:4: aliases expand it to more than 10000 values; a config needs far fewer "
        "(write the values out instead of nesting aliases)"
    ]
    assert time.monotonic() - started < scaled(2)
    assert check_config_file(path)[0] == 2


def test_ordinary_aliases_still_work(tmp_path: Path) -> None:
    path = write(tmp_path, "shards: 2\nlease: &l {ttl: 20s}\nhosts: {expected: 1}\n")
    assert load_broker_config(path, env={}).lease.ttl == 20.0


def test_recursive_alias_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "shards: &a [*a]\n")) == [
        "F:1: an alias refers to the mapping or list it is inside of"
    ]
    deep = "shards: " + "[" * 100_000 + "]" * 100_000 + "\n"
    assert problems(write(tmp_path, deep)) == [
        "F:1: mappings and lists nested deeper than 32 levels; a config needs a handful"
    ]


# ------------------------------------------------------------------------------------ the bot program


def test_config_check_finds_a_missing_bot_program(tmp_path: Path) -> None:
    token = "  token: t0ken-value\n"
    cases = {
        "bot:\n  module: no_such_module_xyz.bot\n" + token:
            f"F:2: bot.module: the module 'no_such_module_xyz.bot' is not found from '{tmp_path}'",
        "bot:\n  module: examples.nope\n  cwd: " + str(ROOT) + "\n" + token:
            f"F:2: bot.module: the module 'examples.nope' is not found from '{ROOT}'",
        "bot:\n  module: json\n  cwd: missing-dir\n" + token:
            f"F:3: bot.cwd: the working directory '{tmp_path / 'missing-dir'}' does not exist",
        "bot:\n  command: no-such-program-xyz --flag\n" + token:
            "F:2: bot.command: the program 'no-such-program-xyz' is not found on PATH",
        "bot:\n  command: [./bot.sh]\n" + token:
            f"F:2: bot.command: the program './bot.sh' does not exist (looked for '{tmp_path / 'bot.sh'}')",
        "bot:\n  module: email\n" + token:
            "F:2: bot.module: the module 'email' is a package without __main__.py",
    }
    import os

    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        for text, expected in cases.items():
            path = write(tmp_path, text)
            code, output = check_config_file(path, env={})
            assert code == 2, text
            assert output.replace(str(path), "F").startswith(expected), output
        for ok in ("bot:\n  module: examples.bot\n  cwd: " + str(ROOT) + "\n" + token,
                   "bot:\n  command: [python, -c, pass]\n" + token, "bot:\n  module: json.tool\n" + token):
            code, output = check_config_file(write(tmp_path, ok), env={})
            assert code == 0, output
    finally:
        os.chdir(cwd)
