"""The bad-input cases of scripts/reliability.py (docs/reliability.md), run in-process on every test run.

Each must exit 2 (or 3) with one ``error:`` line, no traceback, and leave nothing in its output folder.
The interrupted run (a subprocess stopped by SIGINT) is left to the script itself.
"""

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


@pytest.mark.parametrize("case", FAST, ids=[case.name for case in FAST])
def test_bad_input_is_one_error_line_and_no_output(case, tmp_path):
    row = reliability.run_case(case, tmp_path, in_process)
    assert row.problems() == [], (row.message, row.left)
    assert row.message.startswith("error:")


def test_a_misbehaving_run_is_reported_as_a_bug(tmp_path):
    # The script's verdict must be able to say BUG: a run that "succeeds" on a truncated file and
    # leaves a file behind is two problems.
    def sloppy(args: list[str]) -> tuple[int, str]:
        Path(args[args.index("--out") + 1]).write_text("partial")
        return 0, "Traceback (most recent call last):"

    row = reliability.run_case(reliability.CASES[0], tmp_path, sloppy)
    assert row.problems() == ["traceback", "exit 0", "left T.tfm"]
