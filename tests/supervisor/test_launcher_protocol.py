"""The launcher's request/reply records (letsfrag/supervisor/launcher.py): round trip and clear errors for bad input."""

from __future__ import annotations

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
