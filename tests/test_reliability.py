"""The bad-input cases of scripts/reliability.py (docs/reliability.md), run in-process on every test run.

Each must exit 2 (or 3) with one ``error:`` line that names its own cause (``Case.expected``), no
traceback, and leave nothing in its output folder. The interrupted run (a subprocess stopped by SIGINT)
is left to the script itself.
"""

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossreg.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import reliability  # a script, not a package module

FAST = [case for case in reliability.CASES if case.name != "interrupted run"]


def in_process(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["register", *args])
    return result.exit_code, result.stderr + result.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``run(case)``: the case's Row, each case run once per module (the cross-check reuses them)."""
    rows = {}

    def run(case: reliability.Case) -> reliability.Row:
        if case.name not in rows:
            rows[case.name] = reliability.run_case(case, tmp_path_factory.mktemp("reliability"), in_process)
        return rows[case.name]

    return run


@pytest.mark.parametrize("case", FAST, ids=[case.name for case in FAST])
def test_bad_input_is_one_error_line_naming_its_cause_and_no_output(case, run):
    row = run(case)
    assert re.search(case.expected, row.message), f"expected /{case.expected}/, got: {row.message}"
    assert row.problems() == [], (row.message, row.left)
    assert row.message.startswith("error:")


def test_each_pattern_names_only_its_own_cause(run):
    # A pattern that also fits another cause's message (".*", "error", "cannot") would let a case pass
    # that failed for that other reason: each must miss some other message, and every message of a
    # case with a different pattern (cases share a pattern only when they share a cause).
    rows = [run(case) for case in FAST]
    for case in FAST:
        others = [r for r in rows if r.case is not case]
        assert any(not re.search(case.expected, r.message) for r in others), case.name
        clashes = [
            r.case.name
            for r in others
            if r.case.expected != case.expected and re.search(case.expected, r.message)
        ]
        assert clashes == [], f"/{case.expected}/ ({case.name}) also matches {clashes}"


def test_a_misbehaving_run_is_reported_as_a_bug(tmp_path):
    # The script's verdict must be able to say BUG: a run that "succeeds" on a truncated file and
    # leaves a file behind is three problems.
    def sloppy(args: list[str]) -> tuple[int, str]:
        Path(args[args.index("--out") + 1]).write_text("partial")
        return 0, "Traceback (most recent call last):"

    row = reliability.run_case(reliability.CASES[0], tmp_path, sloppy)
    assert row.problems() == ["traceback", "exit 0", "message does not match", "left T.tfm"]


def test_a_run_refused_for_another_reason_is_reported_as_a_bug(tmp_path):
    # The NaN case refused because the fixed image is missing: the right exit code and one error line,
    # but no evidence that NaN voxels are caught.
    def missing_fixed(args: list[str]) -> tuple[int, str]:
        return 2, f"error: {args[0]}.missing: no such file or directory\n"

    nan_case = next(case for case in reliability.CASES if case.name == "NaN/Inf voxels")
    row = reliability.run_case(nan_case, tmp_path, missing_fixed)
    assert row.problems() == ["message does not match"]
