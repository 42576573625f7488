"""Result.save: every output, or none of them."""

import numpy as np
import pytest

from crossreg import viz
from crossreg.errors import OutputWriteError
from crossreg.image import from_array
from crossreg.result import Result
from crossreg.transform import AffineTransform


@pytest.fixture()
def result() -> Result:
    rng = np.random.default_rng(0)
    image = from_array(rng.random((24, 24)))
    points = rng.uniform(0, 20, (6, 2))
    shift = AffineTransform(np.eye(2), np.array([1.0, -2.0]), "rigid")
    inliers = np.array([True] * 5 + [False])
    return Result(shift, shift, points, shift.apply(points), inliers, 0.99, 0.1, image, image)


def outputs(folder):
    return folder / "T.tfm", folder / "R.nii.gz", folder / "qa.png", folder / "m.csv"


def test_save_writes_every_output(result, tmp_path):
    written = result.save(*outputs(tmp_path))
    expected = {*outputs(tmp_path), *Result.companion_paths(tmp_path / "m.csv")}
    assert set(written) == expected
    assert {p for p in tmp_path.iterdir()} == expected


@pytest.mark.parametrize("error", [KeyboardInterrupt, OutputWriteError("disk full")])
def test_a_failed_or_interrupted_save_leaves_nothing(result, tmp_path, monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(viz, "save_qa", fail)  # the third of four outputs: two are written by then
    with pytest.raises(type(error) if isinstance(error, Exception) else error):
        result.save(*outputs(tmp_path))
    assert list(tmp_path.iterdir()) == []
