"""The launcher's request/reply records (letsfrag/supervisor/launcher.py): round trip and clear errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.supervisor import host_config

from letsfrag.supervisor.launcher import LaunchReply, LaunchRequest
from letsfrag.supervisor.prefork import launcher_mode


def test_a_request_round_trips() -> None:
    request = LaunchRequest(module="examples.bot", env={"A": "1"}, cwd="/srv/bot", supervisor=42)
    assert LaunchRequest.decode(request.encode()) == request


@pytest.mark.parametrize(("data", "problem"), [
    (b"not json", "not JSON"),
    (b"[1]", "JSON object"),
    (b'{"env": {}, "cwd": null, "supervisor": 1}', "module name"),
    (b'{"module": "m", "env": {"A": 1}, "cwd": null, "supervisor": 1}', "env as an object of strings"),
    (b'{"module": "m", "env": {}, "cwd": 3, "supervisor": 1}', "cwd"),
    (b'{"module": "m", "env": {}, "cwd": null, "supervisor": true}', "supervisor's pid"),
])
def test_a_bad_request_names_what_is_wrong(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        LaunchRequest.decode(data)


def test_replies() -> None:
    assert LaunchReply.decode(LaunchReply(pid=7).encode()) == LaunchReply(pid=7)
    assert LaunchReply.decode(LaunchReply(error="fork failed").encode()).error == "fork failed"
    assert "unreadable" in LaunchReply.decode(b"\xff").error


def test_fork_needs_a_module(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"launcher: fork needs bot\.module"):
        host_config("redis://127.0.0.1:1/0", tmp_path, bot={"command": ["true"], "launcher": "fork"})
    assert launcher_mode(host_config("redis://127.0.0.1:1/0", tmp_path, launcher="fork")) == "fork"
    assert launcher_mode(host_config("redis://127.0.0.1:1/0", tmp_path, launcher="exec")) == "exec"
    exec_module = host_config("redis://127.0.0.1:1/0", tmp_path, bot={"module": "m", "launcher": "exec"})
    assert launcher_mode(exec_module) == "exec"


@pytest.mark.integration
def test_the_launcher_builds_the_config_models_a_cluster_validates_and_no_others() -> None:
    # a fresh interpreter: in this one, other tests have long built every model
    code = (
        "import letsfrag.config as c\n"
        "from letsfrag.supervisor.launcher import PREBUILD, _prebuild\n"
        "assert PREBUILD == (('letsfrag.config', 'RedisSettings'),), PREBUILD\n"
        "assert not c.RedisSettings.__pydantic_complete__, 'built at import: defer_build is off'\n"
        "_prebuild()\n"
        "assert c.RedisSettings.__pydantic_complete__\n"
        "assert not c.HostConfig.__pydantic_complete__ and not c.BrokerConfig.__pydantic_complete__\n"
        "c.RedisSettings.model_validate({'url': 'redis://127.0.0.1:1/0'})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
