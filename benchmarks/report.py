"""Benchmark results: the shared JSON format, and the README table built from ``benchmarks/results/*.json``.

Run ``python -m benchmarks.report`` to print the markdown table (benchmark, what, measured, goal, met?,
command) for the README; the lead calls :func:`render_markdown`. Results written by :func:`write_result`
carry a ``summary`` block with those columns; the older results (``coldstart_client``, ``rpc``, ``sim_load``,
``supervisor``, ``tui``) are summarised by small adapters here, and any other file gets a generic row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

__all__ = ["RESULTS", "Row", "load_results", "render_markdown", "repeat", "rows", "spread", "traffic_arguments",
           "write_result"]

_Sample = TypeVar("_Sample")

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the README benchmark table."""

    benchmark: str
    what: str
    measured: str
    goal: str
    met: bool | None
    command: str


@contextlib.contextmanager
def work_root(name: str, *, keep: bool = False) -> Iterator[Path]:
    """A fresh folder for one benchmark's runs (``letsfrag-bench-<name>-*``), removed afterwards unless ``keep``
    (``--keep``: the logs stay for a look)."""
    root = Path(tempfile.mkdtemp(prefix=f"letsfrag-bench-{name}-"))
    try:
        yield root
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def traffic_arguments(parser: argparse.ArgumentParser, *, per_cluster: int, max_concurrency: int, timeout: float,
                      timeout_help: str = "seconds to wait for each phase",
                      rate_help: str = "events per second (half pings, half joins)",
                      result_file: str | None = None) -> None:
    """The options every deployment-and-traffic benchmark (``failover``, ``handover``, ``reshard``) takes, with
    its defaults: ``--repeats`` (3), ``--per-cluster``, ``--max-concurrency``, ``--window`` (1 s), ``--rate``
    (20 events/s), ``--timeout``, ``--keep``, ``--results`` (a folder for ``result_file``; only with one) and
    ``--no-write``. The benchmark adds its own options to ``parser`` before or after, and checks the values."""
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-cluster", type=int, default=per_cluster,
                        help=f"shards per cluster (default {per_cluster})")
    parser.add_argument("--max-concurrency", type=int, default=max_concurrency)
    parser.add_argument("--window", type=float, default=1.0, help="identify window in seconds")
    parser.add_argument("--rate", type=float, default=20.0, help=rate_help)
    parser.add_argument("--timeout", type=float, default=timeout, help=timeout_help)
    parser.add_argument("--keep", action="store_true", help="keep the work folders (logs)")
    if result_file is not None:
        parser.add_argument("--results", type=Path, default=RESULTS, help=f"folder for {result_file}")
    parser.add_argument("--no-write", action="store_true", help="do not write the result file")


def repeat(name: str, args: argparse.Namespace, once: Callable[[argparse.Namespace, Path], _Sample],
           line: Callable[[_Sample], str]) -> list[_Sample]:
    """``once(args, folder)`` ``args.repeats`` times, each in a fresh ``run-<i>`` folder of one :func:`work_root`
    (kept with ``args.keep``), printing ``  repeat <n>: <line(sample)>`` to stderr after each; the samples."""
    samples: list[_Sample] = []
    with work_root(name, keep=args.keep) as root:
        for index in range(args.repeats):
            sample = once(args, root / f"run-{index}")
            samples.append(sample)
            print(f"  repeat {index + 1}: {line(sample)}", file=sys.stderr)
    return samples


def traffic_outcome(handling: Mapping[str, Any]) -> dict[str, int]:
    """The simulator referee's handling counters as a benchmark reports them: events sent, lost (never answered,
    or delivered to no session) and answered twice or more."""
    return {"sent": int(handling["sent"]), "lost": int(handling["unanswered_live"]) + int(handling["undeliverable"]),
            "twice": int(handling["answered_twice_or_more"])}


def spread(samples: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, min and max of ``samples`` (the machine is noisy: never a single number)."""
    if not samples:
        raise ValueError("spread() needs at least one sample")
    return {"median": round(statistics.median(samples), digits), "min": round(min(samples), digits),
            "max": round(max(samples), digits), "samples": [round(s, digits) for s in samples]}


def fmt_spread(value: dict[str, Any], unit: str = "s", digits: int = 2) -> str:
    """``"3.41 s (3.30–3.62)"`` from a :func:`spread` dict (no range for a single sample)."""
    text = f"{value['median']:.{digits}f} {unit}".rstrip()
    if len(value.get("samples", [])) > 1 or value["min"] != value["max"]:
        text += f" ({value['min']:.{digits}f}–{value['max']:.{digits}f})"
    return text


def write_result(name: str, data: dict[str, Any], *, what: str, measured: str, goal: str, met: bool | None,
                 command: str, results: Path = RESULTS) -> Path:
    """Write ``results/<name>.json`` with a ``summary`` block (the README row) and machine facts."""
    document = {
        "benchmark": name,
        "summary": {"what": what, "measured": measured, "goal": goal, "met": met, "command": command},
        **data,
        "machine": {"cpu_count": psutil.cpu_count(), "python": platform.python_version(),
                    "platform": sys.platform},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


def load_results(results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` in ``results`` by file stem, sorted by name."""
    loaded: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"benchmark result {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"benchmark result {path} is not a JSON object")
        loaded[path.stem] = data
    return loaded


# ------------------------------------------------------------------------------- adapters for older results

def _coldstart_client(d: dict[str, Any]) -> Row:
    limit, seconds = d["physical_limit"], d["seconds_to_all_ready"]
    return Row("coldstart_client", f"{d['shards']} shards in {d['clusters']} in-process cluster clients → all "
               f"READY (max_concurrency {d['max_concurrency']}, window {d['window']:g} s)",
               f"{seconds:.2f} s, {d['identify_violations']} violations", f"report (limit {limit:.2f} s)", None,
               "python -m benchmarks.coldstart_client")


def _rpc(d: dict[str, Any]) -> Row:
    return Row("rpc", f"RPC round trip over Redis, {d['clusters']} clusters",
               f"request p50 {d['request']['p50_ms']:.2f} ms / p99 {d['request']['p99_ms']:.2f} ms; broadcast "
               f"p50 {d['broadcast']['p50_ms']:.2f} ms", "report", None, "python -m benchmarks.rpc")


def _sim_load(d: dict[str, Any]) -> Row:
    steady = max(d["sim_cpu_percent_idle"], d["sim_cpu_percent_traffic"])
    return Row("sim_load", f"simulator CPU, {d['shards']} shards / {d['guilds']} guilds, "
               f"{d['traffic_rate_per_second']:g} !ping/s", f"{steady:.1f} % of a core",
               f"< {d['cpu_goal_percent']:g} %", bool(d["goal_met"]), "python -m benchmarks.sim_load")


def _supervisor(d: dict[str, Any]) -> Row:
    respawn = d["respawn_beyond_backoff_ms"]
    identify = d.get("identify_after_crash_ms")
    what = f"supervisor with {d['clusters']} idle clusters: CPU, respawn beyond backoff"
    measured = f"{d['supervisor_cpu_percent']:.2f} % CPU; respawn {respawn['median']:.1f} ms (max {respawn['max']:.1f})"
    goal = "< 2 % CPU; respawn < 150 ms"
    if identify:
        what += "; crash → first IDENTIFY beyond backoff (example bot), bot.launcher fork vs exec"
        measured += "; IDENTIFY " + ", ".join(f"{name} {v['median']:.0f} ms ({v['min']:.0f}–{v['max']:.0f})"
                                              for name, v in identify.items())
        goal += f"; IDENTIFY ≤ {100:g} ms with fork"
    return Row("supervisor", what, measured, goal, all(d["goals"].values()), "python -m benchmarks.supervisor")


def _tui(d: dict[str, Any]) -> Row:
    dep, total = d["deployment"], d["total"]
    return Row("tui", f"letsfrag-top snapshot + refresh, {dep['hosts']} hosts / {dep['clusters']} clusters / "
               f"{dep['shards']} shards", f"{total['median_ms']:.0f} ms ({total['min_ms']:.0f}–"
               f"{total['max_ms']:.0f})", f"< {d['goal_ms']:g} ms", bool(d["meets_goal"]),
               "python -m benchmarks.tui")


_ADAPTERS: dict[str, Callable[[dict[str, Any]], Row]] = {
    "coldstart_client": _coldstart_client, "rpc": _rpc, "sim_load": _sim_load, "supervisor": _supervisor,
    "tui": _tui,
}


def _row(name: str, data: dict[str, Any]) -> Row:
    summary = data.get("summary")
    if isinstance(summary, dict):
        met = summary.get("met")
        return Row(name, str(summary.get("what", "")), str(summary.get("measured", "")),
                   str(summary.get("goal", "")), met if isinstance(met, bool) else None,
                   str(summary.get("command", f"python -m benchmarks.{name}")))
    adapter = _ADAPTERS.get(name)
    if adapter is not None:
        try:
            return adapter(data)
        except (KeyError, TypeError, ValueError):
            pass  # an older or newer shape: fall through to the generic row
    met = data.get("goal_met", data.get("meets_goal"))
    return Row(name, "see the JSON file", "see the JSON file", "—", met if isinstance(met, bool) else None,
               f"python -m benchmarks.{name}")


def rows(results: Path = RESULTS) -> list[Row]:
    """One :class:`Row` per result file."""
    return [_row(name, data) for name, data in load_results(results).items()]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _met(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "**no**")


def render_markdown(results: Path = RESULTS) -> str:
    """The README benchmark table in markdown, one row per JSON file in ``results``."""
    lines = ["| benchmark | what | measured | goal | met? | command |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows(results):
        lines.append(f"| `{row.benchmark}` | {_cell(row.what)} | {_cell(row.measured)} | {_cell(row.goal)} | "
                     f"{_met(row.met)} | `{row.command}` |")
    return "\n".join(lines) + "\n"


def print_rich_table(title: str, columns: Sequence[str], body: Sequence[Sequence[str]]) -> None:
    """Print a rich table to the terminal (used by the benchmarks for their own results)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for line in body:
        table.add_row(*line)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Print the markdown table of every result."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of result JSON files")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: results folder {args.results} does not exist", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(render_markdown(args.results))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
