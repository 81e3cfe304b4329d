"""The package stands alone: what a wheel and an sdist hold, one version, honest floors, `letsfrag init`."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import letsfrag
from letsfrag import samples
from letsfrag.cli.main import main
from letsfrag.lab import bench

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _floors() -> dict[str, Version]:
    """Every ``>=`` lower bound in pyproject.toml (dependencies and extras), by normalised name."""
    project = PYPROJECT["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    floors: dict[str, Version] = {}
    for line in lines:
        requirement = Requirement(line)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                floors[requirement.name.lower()] = Version(spec.version)
    return floors


def _lowest() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints" / "lowest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = Version(version.strip())
    return pins


def test_every_floor_is_pinned_in_the_lowest_constraints() -> None:
    assert _lowest() == _floors()


def test_one_version_source() -> None:
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "letsfrag.__version__"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License") and PYPROJECT["project"]["license"] == "MIT"


def test_packaged_samples_are_the_checkout_files_not_copies() -> None:
    assert samples.BOT.resolve() == (ROOT / "examples" / "bot.py").resolve()
    for name in samples.CONFIG_NAMES:
        assert samples.sample_config(name).resolve() == (ROOT / "configs" / name).resolve()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_sdist_holds_the_tests_and_its_wheel_the_demo_bot_and_sample_configs(tmp_path: Path) -> None:
    # python -m build: the sdist from the checkout, then the wheel from that sdist (as an installer would)
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=280)
    (sdist,) = tmp_path.glob("letsfrag-*.tar.gz")
    (wheel,) = tmp_path.glob("letsfrag-*.whl")
    assert sdist.name == f"letsfrag-{letsfrag.__version__}.tar.gz"
    git = subprocess.run(["git", "ls-files", "tests", "configs", "examples", "LICENSE"], cwd=ROOT,
                         capture_output=True, text=True)
    tracked = git.stdout.split() if git.returncode == 0 else []
    if not tracked:  # not a git checkout (e.g. an unpacked sdist): the test files on disk
        tracked = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py") if "__pycache__" not in p.parts]
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    missing = sorted(set(tracked) - in_sdist)
    assert not missing, f"the sdist lacks {missing}"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert archive.read("letsfrag/samples/bot.py") == (ROOT / "examples" / "bot.py").read_bytes()
        for name in samples.CONFIG_NAMES:
            assert archive.read(f"letsfrag/samples/{name}") == (ROOT / "configs" / name).read_bytes()
    assert f"letsfrag-{letsfrag.__version__}.dist-info/licenses/LICENSE" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "examples/", "configs/")) for name in names)


def test_init_writes_the_samples_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "cfg"
    assert main(["init", str(target)]) == 0
    for name in samples.CONFIG_NAMES:
        assert (target / name).read_text() == (ROOT / "configs" / name).read_text()
    assert main(["init", str(target)]) == 2
    err = capsys.readouterr().err
    assert "would overwrite" in err and str(target / "local.yaml") in err and "Traceback" not in err
    (target / "local.yaml").write_text("edited")
    assert main(["init", str(target), "--force"]) == 0
    assert (target / "local.yaml").read_text() == (ROOT / "configs" / "local.yaml").read_text()


def test_run_without_a_config_takes_the_working_directory_one_else_the_packaged_sample(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert samples.default_local_config() == samples.sample_config("local.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "local.yaml").write_text("redis: embedded\n")
    assert samples.default_local_config() == Path("configs/local.yaml")


def test_bench_without_a_checkout_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "BENCHMARKS", tmp_path / "site-packages" / "benchmarks")
    assert main(["bench", "coldstart"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "checkout" in err
