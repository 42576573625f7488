"""README's first command, `crossreg demo`, as a newcomer runs it: the whole pipeline on the shipped MRI."""

import numpy as np
from typer.testing import CliRunner

from crossreg.cli import app
from crossreg.demo import OUTPUTS
from crossreg.markups import read_matches_csv
from crossreg.synth.pairs import PAIR_FILES
from crossreg.transform import read_transform


def test_demo_writes_everything_and_lands_the_known_motion(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "look at qa.png first" in result.output
    for name in (*PAIR_FILES, *OUTPUTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # The written transform against the written truth, on the written landmarks.
    fixed_mm, moving_mm, _ = read_matches_csv(out / "landmarks.csv")
    start = np.linalg.norm(fixed_mm - moving_mm, axis=1)
    error = np.linalg.norm(read_transform(out / "transform.tfm").apply(fixed_mm) - moving_mm, axis=1)
    assert start.mean() > 10.0 and error.mean() < 0.3 and error.max() < 0.6
    # A second run refuses to overwrite without --force, and says so.
    again = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert again.exit_code == 2 and "pass --force" in again.output
