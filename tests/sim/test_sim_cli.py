"""``python -m letsfrag.sim``: argument parsing, the URL line, serving, clean exit on SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from support.waiting import scaled

from letsfrag.sim.cli import add_arguments, options_from_args

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_arguments_become_options() -> None:
    options = options_from_args(parse(
        "--shards", "16", "--guilds", "9", "--identify-window", "2s", "--ack-delay", "5ms",
        "--heartbeat-interval", "1m", "--on-violation", "close", "--resume-window", "90s",
        "--reject-when-exhausted", "--deny-privileged-intents", "--traffic-rate", "2.5", "--token", "T",
        "--guilds-per-shard", "1000", "--max-guilds-per-shard", "0",
    ))
    assert (options.shards, options.guilds, options.identify_window, options.ack_delay) == (16, 9, 2.0, 0.005)
    assert (options.heartbeat_interval, options.on_violation, options.resume_window) == (60.0, "close", 90.0)
    assert options.reject_when_exhausted and not options.privileged_intents_allowed
    assert (options.traffic_rate, options.token) == (2.5, "T")
    assert (options.guilds_per_shard, options.max_guilds_per_shard) == (1000, 0)
    defaults = options_from_args(parse())
    assert (defaults.port, defaults.identify_window, defaults.heartbeat_interval) == (0, 5.0, 41.25)
    assert (defaults.guilds_per_shard, defaults.max_guilds_per_shard) == (None, 2500)


def test_bad_duration_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--ack-delay", "soon")
    assert "argument --ack-delay: expected a duration" in capsys.readouterr().err


@pytest.mark.integration
def test_module_serves_prints_its_port_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "letsfrag.sim", "--port", "0", "--shards", "2", "--guilds", "3"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as process:
        _serve_and_stop(process)


def _serve_and_stop(process: subprocess.Popen[str]) -> None:
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"letsfrag sim listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match and int(match.group(2)) > 0, line
        with urllib.request.urlopen(match.group(1) + "/_sim/stats", timeout=5) as response:
            stats = json.load(response)
        assert stats["guilds"] == 3 and stats["shard_count"] == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=scaled(10)) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.integration
def test_bad_option_value_exits_2_with_the_field_named() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "letsfrag.sim", "--shards", "0"], cwd=ROOT, capture_output=True, text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "shards: must be at least 1" in result.stderr and "Traceback" not in result.stderr
