"""The README tells the truth about the commands and the test command CI runs."""

from __future__ import annotations

import sys
from pathlib import Path

from letsfrag.cli.main import HANDLERS, build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
#: the whole suite, as the README's first lines and the last line of .ci/run give it
TEST_COMMAND = "python -m pytest -n 4 --dist loadgroup"


def test_readme_test_command_is_what_ci_runs() -> None:
    assert f"pip install -e '.[dev]' && {TEST_COMMAND}" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pip install --quiet -e '.[dev]'" in ci
    assert ci.rstrip().endswith(TEST_COMMAND)


def test_every_command_is_documented() -> None:
    for command in HANDLERS:
        assert f"letsfrag {command}" in README, f"README does not document `letsfrag {command}`"


def test_every_command_has_help() -> None:
    parser = build_parser()
    for command in HANDLERS:
        words = command.split()
        try:
            parser.parse_args([*words, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, command


def test_benchmark_table_is_generated_from_the_results() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import render_markdown

    start = README.index("<!-- benchmarks:start -->") + len("<!-- benchmarks:start -->")
    end = README.index("<!-- benchmarks:end -->")
    assert README[start:end].strip() == render_markdown().strip(), "run python -m benchmarks.report and paste it"


def test_every_config_key_is_documented_in_the_readme() -> None:
    from letsfrag.config import config_reference_markdown

    reference = config_reference_markdown()
    tables = reference[reference.index("## Common keys"):].strip().replace("\n## ", "\n### ")
    tables = "#" + tables
    start = README.index("<!-- config:start -->") + len("<!-- config:start -->")
    end = README.index("<!-- config:end -->")
    assert README[start:end].strip() == tables, "regenerate the README's config tables from the models"
