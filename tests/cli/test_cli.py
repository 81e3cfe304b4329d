"""The command line as a user runs it: ``python -m letsfrag ...`` and the ``letsfrag-top`` script as subprocesses.

Commands that would connect somewhere are given bad input, so each run ends (exit 2) before it connects.
Runs are started together and then awaited, so the file costs a few interpreter starts of wall time; where one
test checks many command lines, most run in this process through ``support.cli.main_in_process`` (the same
``letsfrag.cli.main.main``) and a few as subprocesses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import main_in_process

from letsfrag import __version__
from letsfrag.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
TOP = Path(sys.executable).parent / "letsfrag-top"


def _start(argv: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "LETSFRAG_SECRET"}
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_all(commands: list[list[str]], cwd: Path) -> list[tuple[int, str, str]]:
    """Run ``letsfrag ARGS`` (or a full argv starting with a path) for every entry, all at once."""
    processes = [_start(c if c[0].startswith("/") else [sys.executable, "-m", "letsfrag", *c], cwd)
                 for c in commands]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        results.append((process.returncode, out, err))
    return results


@pytest.fixture
def bad_broker(tmp_path: Path) -> Path:
    path = tmp_path / "broker.yaml"
    path.write_text("redis: redis://127.0.0.1:1/0\nshards: 4\nshardz: 4\n")
    return path


#: the command lines of test_config_positionally_or_with_c that also run as real subprocesses
REAL_PROCESS = {"broker CONFIG", "supervise -c", "run CONFIG", "no config"}


@pytest.mark.integration  # supervise starts its launcher process before it reads the config
def test_config_positionally_or_with_c(tmp_path: Path, bad_broker: Path, monkeypatch: pytest.MonkeyPatch,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    host = tmp_path / "host.yaml"
    host.write_text("redis: redis://127.0.0.1:1/0\nhost: {capacity: many}\nbot: {module: json.tool, token: t}\n")
    local = tmp_path / "local.yaml"
    local.write_text("shards: 2\nbot: {module: json.tool, token: t}\nembedded: {prot: 0}\n")
    broker_ok = ROOT / "configs" / "broker.yaml"
    commands = {
        "broker CONFIG": ["broker", str(bad_broker)],
        "broker -c": ["broker", "-c", str(bad_broker)],
        "broker --config": ["broker", "--config", str(bad_broker)],
        "supervise CONFIG": ["supervise", str(host)],
        "supervise -c": ["supervise", "-c", str(host)],
        "run CONFIG": ["run", "--no-progress", str(local)],
        "run -c": ["run", "-c", str(local), "--no-progress"],
        "status -c": ["status", "-c", str(bad_broker)],
        "status CONFIG": ["status", str(bad_broker)],
        "drain HOST CONFIG": ["drain", "h1", str(bad_broker)],
        "config check -c": ["config", "check", "-c", str(bad_broker)],
        "config check CONFIG": ["config", "check", str(bad_broker)],
        "header of broker.yaml": ["config", "check", "-c", str(broker_ok)],
        "no config": ["broker"],
        "two configs": ["supervise", str(host), "-c", str(bad_broker)],
    }
    real = [label for label in commands if label in REAL_PROCESS]
    results = {f"{label} (process)": result
               for label, result in zip(real, run_all([commands[label] for label in real], tmp_path), strict=True)}
    monkeypatch.delenv("LETSFRAG_SECRET", raising=False)
    monkeypatch.chdir(tmp_path)
    for label, argv in commands.items():
        capfd.readouterr()
        code = main_in_process(argv)
        out, err = capfd.readouterr()
        results[label] = (code, out, err)
    expected_key = {"supervise": "host.capacity", "run": "embedded: unknown key 'prot'"}
    for label, (code, out, err) in results.items():
        assert "Traceback" not in out + err, f"{label}:\n{err}"
        label = label.removesuffix(" (process)")
        if label == "header of broker.yaml":
            assert code == 0 and out.startswith(f"{broker_ok}: valid broker config"), f"{label}: {code}\n{err}"
            continue
        assert code == 2, f"{label}: exit {code}\n{out}\n{err}"
        if label == "no config":
            assert "the config is required: give CONFIG or -c FILE" in err
        elif label == "two configs":
            assert "the config is given twice" in err
        else:
            key = expected_key.get(label.split()[0], "unknown key 'shardz'")
            assert key in err, f"{label}: {err}"
    assert not (tmp_path / ".letsfrag").exists(), "run started an embedded Redis for a bad config"


@pytest.mark.integration
def test_global_options_after_the_command(tmp_path: Path) -> None:
    config = ROOT / "configs" / "broker.yaml"
    [(code, out, err)] = run_all([["config", "check", str(config), "-v", "--log-format", "json", "-q"]], tmp_path)
    assert code == 0 and out.startswith(f"{config}: valid broker config"), err
    args = build_parser().parse_args(["-v", "status", "-v", "--log-format", "json", "-q"])
    assert (args.verbose, args.verbose_after, args.log_format, args.quiet) == (1, 1, "json", True)
    args = build_parser().parse_args(["--log-format", "plain", "status"])
    assert args.log_format == "plain" and not hasattr(args, "verbose_after"), "unsaid after-options keep values"


@pytest.mark.integration
def test_version_everywhere_and_bad_global_value(tmp_path: Path) -> None:
    assert TOP.exists(), "the letsfrag-top console script is installed next to the interpreter"
    results = run_all([["--version"], ["status", "--version"], [str(TOP), "--version"],
                       ["status", "--log-format", "yaml"]], tmp_path)
    for code, out, err in results[:3]:
        assert (code, out.strip()) == (0, f"letsfrag {__version__}"), err
    code, out, err = results[3]
    assert code == 2 and "--log-format: invalid choice: 'yaml'" in err and "Traceback" not in err


@pytest.mark.integration
def test_letsfrag_top_takes_the_same_arguments(tmp_path: Path, bad_broker: Path) -> None:
    results = run_all([[str(TOP), str(bad_broker)], [str(TOP), "-c", str(bad_broker)],
                       [str(TOP), "--redis", "redis://h:abc/0"], [str(TOP), "--help"]], tmp_path)
    for code, _out, err in results[:2]:
        assert code == 2 and "unknown key 'shardz'" in err and "Traceback" not in err, err
    code, out, err = results[2]
    assert code == 2 and "--redis: expected a port from 1 to 65535" in err, err
    code, out, err = results[3]
    assert code == 0 and "usage: letsfrag-top" in out and "--log-format" in out and "--readonly" in out


@pytest.mark.integration
def test_ids_and_redis_urls_on_the_command_line(tmp_path: Path) -> None:
    host = tmp_path / "host.yaml"
    host.write_text("redis: redis://127.0.0.1:1/0\nbot: {module: json.tool, token: t}\n")
    results = run_all([["supervise", str(host), "--host-id", "h0\n"], ["broker", "x.yaml", "--broker-id", "b 1"],
                       ["drain", "h0\n"], ["status", "--redis", "redis://127.0.0.1:99999/0"]], tmp_path)
    for (code, _out, err), needle in zip(results, [
        "argument --host-id: expected letters, digits, '_', '.' or '-' only, found 'h0\\n'",
        "argument --broker-id: expected letters, digits, '_', '.' or '-' only, found 'b 1'",
        "argument HOST: expected letters, digits, '_', '.' or '-' only, found 'h0\\n'",
        "--redis: expected a port from 1 to 65535 after the host",
    ], strict=True):
        assert code == 2 and needle in err and "Traceback" not in err, err


@pytest.mark.integration
def test_config_check_refuses_what_would_fail_later(tmp_path: Path) -> None:
    cases = {
        "port.yaml": ("shards: 2\nredis: redis://127.0.0.1:99999/0\n", "port.yaml:2: redis.url: expected a port"),
        "env.yaml": ("bot:\n  module: json.tool\n  token: t\n  env:\n    DEBUG: on\n",
                     "env.yaml:5: bot.env.DEBUG: YAML reads the unquoted on as the boolean true, expected a "
                     "string; quote it: DEBUG: 'on'"),
        "cwd.yaml": ("bot:\n  module: json.tool\n  token: t\n  cwd: /no/such/dir\n",
                     "cwd.yaml:4: bot.cwd: the working directory '/no/such/dir' does not exist"),
        "module.yaml": ("bot:\n  module: no_such_bot_xyz\n  token: t\n",
                        "module.yaml:2: bot.module: the module 'no_such_bot_xyz' is not found"),
        "command.yaml": ("bot:\n  command: no-such-bot-xyz --fast\n  token: t\n",
                         "command.yaml:2: bot.command: the program 'no-such-bot-xyz' is not found on PATH"),
        "capacity.yaml": ("bot:\n  module: json.tool\n  token: t\nhost:\n  capacity: yes\n",
                          "capacity.yaml:5: host.capacity: expected a whole number, found true"),
    }
    for name, (text, _) in cases.items():
        (tmp_path / name).write_text(text)
    results = run_all([["config", "check", name] for name in cases], tmp_path)
    for (name, (_, needle)), (code, out, err) in zip(cases.items(), results, strict=True):
        assert code == 2 and needle in err and "Traceback" not in out + err, f"{name}: {code}\n{err}"


@pytest.mark.integration
def test_supervise_and_run_refuse_a_missing_bot_program_before_starting(tmp_path: Path) -> None:
    (tmp_path / "host.yaml").write_text("redis: redis://127.0.0.1:1/0\nbot:\n  command: [./nope.sh]\n  token: t\n")
    (tmp_path / "local.yaml").write_text("shards: 2\nbot:\n  module: no_such_bot_xyz\n  token: t\n")
    (supervise, run) = run_all([["supervise", "host.yaml"], ["run", "--no-progress", "-c", "local.yaml"]], tmp_path)
    code, _out, err = supervise
    assert code == 2 and "host.yaml:3: bot.command: the program './nope.sh' does not exist" in err, err
    code, _out, err = run
    assert code == 2 and "local.yaml:3: bot.module: the module 'no_such_bot_xyz' is not found" in err, err
    assert "Traceback" not in supervise[2] + run[2]
    assert not (tmp_path / ".letsfrag").exists() and not (tmp_path / "logs").exists(), "nothing was started"


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_completes_commands_options_and_values(tmp_path: Path) -> None:
    (script_result, fish, zsh) = run_all([["completion", "bash"], ["completion", "fish"], ["completion", "zsh"]],
                                         tmp_path)
    code, script, err = script_result
    assert code == 0, err
    (tmp_path / "letsfrag.bash").write_text(script)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "broker.yaml").write_text("shards: 1\n")
    probe = r"""
source letsfrag.bash
t() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _letsfrag; echo "${COMPREPLY[*]}"; }
t letsfrag con
t letsfrag config ""
t letsfrag status --j
t letsfrag -v status --log-format p
t letsfrag completion ""
t letsfrag broker -c configs/bro
t letsfrag drain --timeout 5s --
"""
    done = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:6] == ["config", "check", "--json", "plain", "bash zsh fish", "configs/broker.yaml"], lines
    assert "--timeout" in lines[6].split() and "--redis" in lines[6].split(), lines[6]
    code, text, err = fish
    assert code == 0 and "complete -c letsfrag -n __fish_use_subcommand -a broker" in text, err
    assert "complete -c letsfrag -n '__fish_seen_subcommand_from status' -l json" in text
    assert "-l log-format -x -a 'auto rich plain json'" in text
    code, text, err = zsh
    assert code == 0 and "bashcompinit" in text and "complete -o filenames -F _letsfrag letsfrag" in text


@pytest.mark.parametrize("name", ["broker", "host", "local"])
def test_the_command_in_each_sample_config_header_parses(name: str) -> None:
    import re
    import shlex

    from letsfrag.cli.main import resolve_config

    header = (ROOT / "configs" / f"{name}.yaml").read_text().splitlines()[0]
    command = re.search(r"`letsfrag ([^`]+)`", header)
    assert command is not None, header
    args = build_parser().parse_args(shlex.split(command.group(1)))
    assert resolve_config(args) == f"configs/{name}.yaml"
