"""The README benchmark table renders from the committed results (no benchmark is run here)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout root holds benchmarks/

from benchmarks.report import (
    RESULTS,
    fmt_spread,
    load_results,
    main,
    render_markdown,
    repeat,
    rows,
    spread,
    traffic_arguments,
    write_result,
)

HEADER = "| benchmark | what | measured | goal | met? | command |"


def test_committed_results_render_one_row_each() -> None:
    names = sorted(p.stem for p in RESULTS.glob("*.json"))
    assert {"coldstart", "failover", "identify"} <= set(names)
    table = render_markdown()
    lines = table.strip().splitlines()
    assert lines[0] == HEADER
    assert len(lines) == 2 + len(names)
    for name, line in zip(names, lines[2:], strict=True):
        assert line.startswith(f"| `{name}` |")
        assert line.count(" | ") == 5, line  # six cells, no stray pipes
        assert f"`python -m benchmarks.{name}" in line
        assert "see the JSON file" not in line, f"{name}: no summary and no adapter"


def test_committed_results_of_the_deployment_benchmarks_carry_goal_and_verdict() -> None:
    loaded = load_results()
    for name in ("coldstart", "failover"):
        summary = loaded[name]["summary"]
        assert isinstance(summary["met"], bool)
        assert summary["met"] == loaded[name]["met"]
        assert loaded[name]["measured"]["min"] <= loaded[name]["measured"]["median"] <= loaded[name]["measured"]["max"]
    assert loaded["identify"]["summary"]["met"] is None
    coldstart = loaded["coldstart"]
    assert set(coldstart["variants"]) >= {"letsfrag", "discord.py default pacing", "spawn delay (1 window per shard)"}
    assert coldstart["physical_limit_seconds"] == 3.0


def test_summary_legacy_and_unknown_files(tmp_path: Path) -> None:
    write_result("alpha", {"measured": spread([2.0, 1.0, 3.0])}, what="a | b", measured="2 s", goal="< 3 s",
                 met=True, command="python -m benchmarks.alpha", results=tmp_path)
    (tmp_path / "sim_load.json").write_text(json.dumps({
        "shards": 64, "guilds": 2000, "traffic_rate_per_second": 50.0, "sim_cpu_percent_idle": 3.0,
        "sim_cpu_percent_traffic": 30.5, "cpu_goal_percent": 25.0, "goal_met": False}))
    (tmp_path / "zeta.json").write_text(json.dumps({"meets_goal": True}))
    table = render_markdown(tmp_path)
    assert "| `alpha` | a \\| b | 2 s | < 3 s | yes | `python -m benchmarks.alpha` |" in table
    assert "| `sim_load` | simulator CPU, 64 shards / 2000 guilds, 50 !ping/s | 30.5 % of a core | < 25 % | **no** |" \
        in table
    assert [r.met for r in rows(tmp_path)] == [True, False, True]


def test_broken_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        render_markdown(tmp_path)
    assert main(["--results", str(tmp_path)]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert main(["--results", str(tmp_path / "missing")]) == 2


def test_spread_and_format() -> None:
    value = spread([3.0, 1.0, 2.0])
    assert (value["median"], value["min"], value["max"]) == (2.0, 1.0, 3.0)
    assert fmt_spread(value) == "2.00 s (1.00–3.00)"
    assert fmt_spread(spread([1.5])) == "1.50 s"
    with pytest.raises(ValueError):
        spread([])


def test_traffic_arguments_and_repeat(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    traffic_arguments(parser, per_cluster=8, max_concurrency=16, timeout=90.0)
    args = parser.parse_args(["--repeats", "2", "--keep"])
    assert (args.repeats, args.per_cluster, args.max_concurrency, args.window, args.rate, args.timeout, args.keep,
            args.no_write) == (2, 8, 16, 1.0, 20.0, 90.0, True, False)
    assert not hasattr(args, "results")
    with_results = argparse.ArgumentParser()
    traffic_arguments(with_results, per_cluster=4, max_concurrency=2, timeout=120.0, result_file="x.json")
    assert with_results.parse_args([]).results == RESULTS
    folders: list[Path] = []

    def once(given: argparse.Namespace, folder: Path) -> int:
        assert given is args and not folder.exists() and folder.parent.is_dir()
        folders.append(folder)
        return len(folders)

    assert repeat("test", args, once, lambda n: f"sample {n}") == [1, 2]
    assert [f.name for f in folders] == ["run-0", "run-1"] and folders[0].parent == folders[1].parent
    assert capsys.readouterr().err == "  repeat 1: sample 1\n  repeat 2: sample 2\n"
    folders[0].parent.rmdir()  # kept (--keep), and empty
