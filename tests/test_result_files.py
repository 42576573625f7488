"""Result.save (crossreg.result_files): every output, or none of them."""

import csv

import numpy as np
import pytest

from crossreg import result_files
from crossreg.errors import OutputWriteError
from crossreg.image import from_array
from crossreg.result import Result
from crossreg.result_files import companion_paths
from crossreg.transform import AffineTransform


@pytest.fixture()
def result() -> Result:
    rng = np.random.default_rng(0)
    image = from_array(rng.random((24, 24)))
    points = rng.uniform(0, 20, (6, 2))
    shift = AffineTransform(np.eye(2), np.array([1.0, -2.0]), "rigid")
    inliers = np.array([True] * 5 + [False])
    return Result(
        transform=shift,
        ransac_transform=shift,
        fixed_points_mm=points,
        moving_points_mm=shift.apply(points),
        inliers=inliers,
        match_confidence=np.linspace(0.0, 1.0, 6),
        confidence=0.99,
        round_trip=0.8,
        ambiguity=0.1,
        agreement=0.4,
        rmse_mm=0.1,
        fixed=image,
        moving=image,
    )


def outputs(folder):
    return folder / "T.tfm", folder / "R.nii.gz", folder / "qa.png", folder / "m.csv"


def test_save_writes_every_output(result, tmp_path):
    written = result.save(*outputs(tmp_path))
    expected = {*outputs(tmp_path), *companion_paths(tmp_path / "m.csv")}
    assert set(written) == expected
    assert {p for p in tmp_path.iterdir()} == expected


@pytest.mark.parametrize("error", [KeyboardInterrupt, OutputWriteError("disk full")])
def test_a_failed_or_interrupted_save_leaves_nothing(result, tmp_path, monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(result_files, "save_qa", fail)  # the third of four outputs: two are written by then
    with pytest.raises(type(error) if isinstance(error, Exception) else error):
        result.save(*outputs(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_matches_file_carries_inliers_and_each_match_confidence(result, tmp_path):
    result.save(tmp_path / "T.tfm", matches_path=tmp_path / "m.csv")
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], result.match_confidence)
    assert [r["inlier"] for r in rows] == ["1"] * 5 + ["0"]
    np.testing.assert_allclose([float(r["moving_x"]) for r in rows], result.moving_points_mm[:, 0])
