"""``crossreg.track_local``: a known translation recovered, lesions that move against their
surroundings found where the rigid motion alone misses them, ``crossreg track --method local``."""

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from crossreg.cli import app
from crossreg.errors import CrossregError, InvalidConfigError
from crossreg.evaluate.anatomy import PointCase, PointMethod, Transferred, run_cases
from crossreg.image import crop_to_mask, from_array
from crossreg.imageio import save
from crossreg.resample import resample
from crossreg.synth.lesions import FollowupConfig, LesionConfig, make_longitudinal
from crossreg.synth.subjects import SubjectConfig
from crossreg.track_local import LocalTrackConfig, ball_offsets, track_lesions
from crossreg.transform import AffineTransform

POINTS = np.array([[-30.0, -15.0, 10.0], [0.0, 20.0, 25.0], [-10.0, 0.0, 35.0]])


@pytest.fixture(scope="module")
def block(t1):
    """A 98 x 118 x 78 mm block of the 2 mm MNI152 around the ventricles."""
    box = np.zeros(t1.array.shape, bool)
    box[25:65, 25:85, 20:70] = True
    return crop_to_mask(t1.with_array(t1.array, box))


def test_ball_offsets_fill_a_ball():
    offsets = ball_offsets(3.0, 1.0)
    assert len(offsets) == 123 and offsets.norm(dim=1).max() <= 3.0  # lattice points of a radius-3 ball
    assert (offsets.sum(dim=0) == 0).all()  # symmetric about its centre


def test_known_translation_recovered(block):
    """A sub-voxel translation of the whole block is found within 0.5 mm at every point, and every
    round trip comes back."""
    shift = np.array([2.6, -1.7, 3.3])
    moved = resample(block, block.grid, AffineTransform(np.eye(3), -shift, "rigid"))
    found = track_lesions(block, POINTS, moved, AffineTransform.identity(3), np.array([4.0, 6.0, 5.0]))
    np.testing.assert_allclose(found.points_mm, POINTS + shift, atol=0.5)
    assert found.reliable.all() and (found.round_trip_mm < 2.0).all()


def test_lesions_moving_against_their_surroundings(t1, tissues):
    """Small lesions shifted 4-5 mm against the tissue around them: the true rigid motion alone
    misses them beyond their follow-up radius; the patch search finds every one within it."""
    lesions = LesionConfig(count=(3, 3), radius_mm=(3.0, 4.0), growth=(0.8, 1.0), shift_mm=(4.0, 5.0))
    config = FollowupConfig(contrast="t2", lesions=lesions)
    pair = make_longitudinal(t1, tissues, SubjectConfig(contrast="t1"), config, seed=3)
    centres, radii, truth, followup_radii = (
        np.array([getattr(lesion, a) for lesion in pair.lesions])
        for a in ("centre_mm", "radius_mm", "followup_centre_mm", "followup_radius_mm")
    )
    rigid = np.linalg.norm(pair.motion.apply(centres) - truth, axis=1)
    found = track_lesions(pair.baseline, centres, pair.followup, pair.motion, radii)
    errors = np.linalg.norm(found.points_mm - truth, axis=1)
    assert (rigid > followup_radii).any(), rigid
    assert (errors < followup_radii).all() and errors.mean() < rigid.mean() / 2, errors


def test_bad_sizes_are_refused(block):
    with pytest.raises(InvalidConfigError):
        LocalTrackConfig(search_mm=0.0)
    with pytest.raises(CrossregError, match="radii"):
        track_lesions(block, POINTS, block, AffineTransform.identity(3), np.array([4.0]))


def test_sized_methods_get_the_source_radii(block):
    """bench-anatomy gives the baseline radii to a sized method only."""
    got = []
    radii = np.array([1.0, 2.0, 3.0])
    case = PointCase("c", "g", 0, block, POINTS, block, POINTS, radii, radii + 1)

    def sized(source, points, target, seed, radii_mm):
        got.append(radii_mm)
        return Transferred(points)

    plain = PointMethod("plain", lambda source, points, target, seed: Transferred(points))
    runs = run_cases([case], [plain, PointMethod("sized", sized, sized=True)])
    assert [r.failed for r in runs] == [None, None]
    np.testing.assert_array_equal(got[0], radii + 1)


def test_track_cli_local(block, tmp_path):
    """--method local on a block and a moved copy: the columns of the input, then score, reliable,
    round_trip_mm; the lesions moved by the known shift."""
    shift = np.array([6.0, -4.0, 10.0])
    save(block, tmp_path / "baseline.nii.gz")
    moved = tuple(np.add(block.origin_mm, shift))
    save(from_array(block.array, block.spacing_mm, moved, block.direction), tmp_path / "followup.nii.gz")
    rows = [f"{x},{y},{z},{r},L{i}" for i, ((x, y, z), r) in enumerate(zip(POINTS, (2, "", 3), strict=True))]
    (tmp_path / "lesions.csv").write_text("\n".join(["x,y,z,radius,label", *rows]) + "\n")
    out = tmp_path / "tracked.csv"
    args = [tmp_path / "baseline.nii.gz", tmp_path / "lesions.csv", tmp_path / "followup.nii.gz"]
    result = CliRunner().invoke(app, ["track", *map(str, args), "--out", str(out), "--method", "local"])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["x", "y", "z", "radius", "label", "score", "reliable", "round_trip_mm"]
    assert [(r["radius"], r["label"]) for r in table] == [("2", "L0"), ("", "L1"), ("3", "L2")]
    found = np.array([[float(r[a]) for a in "xyz"] for r in table])
    np.testing.assert_allclose(found, POINTS + shift, atol=0.5)
    assert all(r["reliable"] == "true" for r in table)
    assert "local patch search" in result.output


@pytest.mark.parametrize(
    ("radius", "options", "words"),
    [
        ("4", ("--features", "mind"), "--features and --weights go with --method uae"),
        ("big", (), "row 1: radius='big' is not a number"),
    ],
)
def test_track_cli_local_refuses_in_one_line(block, tmp_path, radius, options, words):
    save(block, tmp_path / "scan.nii.gz")
    (tmp_path / "lesions.csv").write_text(f"x,y,z,radius\n0,20,25,{radius}\n")
    scan, out = str(tmp_path / "scan.nii.gz"), tmp_path / "tracked.csv"
    args = ["track", scan, str(tmp_path / "lesions.csv"), scan, "--out", str(out), *options]
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and words in lines[0], result.output
    assert not out.exists()
