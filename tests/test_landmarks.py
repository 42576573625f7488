"""``crossreg landmarks`` and ``crossreg track``: points found where the truth puts them, every column
carried through, Slicer files in and out, bad input refused in one line."""

import csv
import json
import re

import matplotlib.image
import numpy as np
import pytest
from typer.testing import CliRunner

from crossreg import datasets
from crossreg.cli import app
from crossreg.image import Grid, axis_aligned_grid, crop_to_mask, from_array
from crossreg.imageio import save
from crossreg.locate import Located
from crossreg.markups import read_markups_json, read_points_table, write_markups_json, write_points_table
from crossreg.resample import resample
from crossreg.synth.geometry import salient_landmarks
from crossreg.synth.lesions import FollowupConfig, make_longitudinal, write_longitudinal
from crossreg.synth.subjects import SubjectConfig, make_subject
from crossreg.transform import AffineTransform
from crossreg.viz import shown_points

runner = CliRunner()
RESULT = ["score", "reliable", "round_trip_mm"]


def run(*args: object):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    return lines[0]


def read_rows(path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return list(rows[0]), rows


def coordinates(rows: list[dict[str, str]], axes: str = "xyz") -> np.ndarray:
    return np.array([[float(row[a]) for a in axes] for row in rows])


@pytest.fixture(scope="module")
def subject_run(t1, tissues, tmp_path_factory):
    """The shipped UAE finds 12 salient MNI152 points in a regionally deformed T2 subject: one CLI run,
    the table and the QA figure, and the truth."""
    folder = tmp_path_factory.mktemp("subject")
    subject = make_subject(t1, tissues, SubjectConfig(families=("regional",), contrast="t2"), seed=0)
    save(subject.image, folder / "subject.nii.gz")
    points = salient_landmarks(t1, 12)
    lines = ["label,note,x,y,z", *(f"P{i},n{i},{x},{y},{z}" for i, (x, y, z) in enumerate(points))]
    (folder / "points.csv").write_text("\n".join(lines) + "\n")
    out, qa = folder / "found.csv", folder / "found.png"
    template = datasets.mni152_path("t1", 2)
    result = run(
        "landmarks", template, folder / "points.csv", folder / "subject.nii.gz", "--out", out, "--qa", qa
    )
    return result, out, qa, np.asarray(subject.to_subject(points), float)


def test_landmarks_found_in_a_synthetic_subject(subject_run):
    result, out, _, truth = subject_run
    assert result.exit_code == 0, result.output
    header, rows = read_rows(out)
    assert header == ["label", "note", "x", "y", "z", *RESULT]
    assert [(r["label"], r["note"]) for r in rows] == [(f"P{i}", f"n{i}") for i in range(12)]
    errors = np.linalg.norm(coordinates(rows) - truth, axis=1)
    assert errors.mean() < 2.0, errors
    reliable = [r["reliable"] for r in rows]
    assert set(reliable) <= {"true", "false"} and reliable.count("true") >= 10
    assert all(len(r["score"].split(".")[1]) == 3 and 0.5 < float(r["score"]) <= 1.0 for r in rows)
    assert f"12 points, {reliable.count('true')} reliable" in result.output


def test_qa_figure_is_a_png_of_sensible_size(subject_run):
    _, _, qa, _ = subject_run
    assert qa.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(qa)
    assert 600 <= pixels.shape[0] <= 2000 and 600 <= pixels.shape[1] <= 2000, pixels.shape
    assert pixels[..., :3].std() > 0.1  # images, not a blank canvas


@pytest.fixture(scope="module")
def shifted_block(t1, tmp_path_factory):
    """A 64 mm block of the 2 mm MNI152 and a copy moved by a known translation (voxels unchanged,
    origin moved), with 5 salient points of the block."""
    folder = tmp_path_factory.mktemp("shifted")
    box = np.zeros(t1.array.shape, bool)
    box[29:61, 38:70, 29:61] = True
    block = crop_to_mask(t1.with_array(t1.array, box))
    shift = np.array([6.0, -4.0, 10.0])
    save(block, folder / "template.nii.gz")
    moved = tuple(np.add(block.origin_mm, shift))
    save(from_array(block.array, block.spacing_mm, moved, block.direction), folder / "query.nii.gz")
    return folder, salient_landmarks(block, 5), shift


def test_slicer_markups_in_and_out(shifted_block):
    """A RAS .mrk.json in, an LPS .mrk.json out: labels kept, points moved by the known shift, the
    result in each control point's description, unreliable points unselected."""
    folder, points, shift = shifted_block
    labels = ["nose", "F-2", "ventricle left", "4", "x,y"]
    write_markups_json(folder / "in.mrk.json", points, labels, "in")
    doc = json.loads((folder / "in.mrk.json").read_text())
    doc["markups"][0]["coordinateSystem"] = "RAS"
    for cp in doc["markups"][0]["controlPoints"]:
        cp["position"] = [-cp["position"][0], -cp["position"][1], cp["position"][2]]
    (folder / "in.mrk.json").write_text(json.dumps(doc))
    out = folder / "found.mrk.json"
    args = (folder / "template.nii.gz", folder / "in.mrk.json", folder / "query.nii.gz")
    result = run("landmarks", *args, "--out", out, "--features", "mind")
    assert result.exit_code == 0, result.output
    found, found_labels = read_markups_json(out)
    assert found_labels == labels
    np.testing.assert_allclose(found, points + shift, atol=0.5)
    control_points = json.loads(out.read_text())["markups"][0]["controlPoints"]
    for cp in control_points:
        assert cp["description"].startswith("score=") and ", reliable=" in cp["description"]
        assert cp["selected"] == ("reliable=true" in cp["description"])
    assert all(cp["selected"] for cp in control_points)  # an exact copy: every round trip returns


def test_track_lesions_into_the_follow_up(t1, tissues, tmp_path):
    """Every lesion of a T1 baseline found within its radius in the T2 follow-up (grown or shrunk,
    tissue pushed, head moved); radius and label carried through."""
    config = SubjectConfig(contrast="t1"), FollowupConfig(contrast="t2")
    longi = make_longitudinal(t1, tissues, *config, seed=1)
    files = write_longitudinal(longi, tmp_path)
    out = tmp_path / "tracked.csv"
    args = (files["baseline.nii.gz"], files["lesions_baseline.csv"], files["followup.nii.gz"], "--out", out)
    result = run("track", *args)
    assert result.exit_code == 0, result.output
    header, rows = read_rows(out)
    assert header == ["x", "y", "z", "radius", "label", *RESULT]
    _, given = read_rows(files["lesions_baseline.csv"])
    assert [(r["radius"], r["label"]) for r in rows] == [(g["radius"], g["label"]) for g in given]
    truth = np.array([lesion.followup_centre_mm for lesion in longi.lesions])
    radii = np.array([lesion.followup_radius_mm for lesion in longi.lesions])
    errors = np.linalg.norm(coordinates(rows) - truth, axis=1)
    assert np.all(errors < radii), (errors, radii)


@pytest.fixture(scope="module")
def slice_pair(tmp_path_factory):
    """A 1 mm MNI152 axial slice and a resampled copy moved by (7.3, -4.6) mm on a grid offset by a
    third of a pixel, with 8 salient points of the slice and where they are in the copy."""
    folder = tmp_path_factory.mktemp("slice")
    template = datasets.mni152_slice(1, "axial", 88)
    shift = np.array([7.3, -4.6])
    grid = axis_aligned_grid(template.grid.corners_mm() + shift, 1.0)
    grid = Grid(grid.shape, grid.spacing_mm, tuple(np.add(grid.origin_mm, 0.35)), grid.direction)
    save(template, folder / "template.nii.gz")
    save(resample(template, grid, AffineTransform(np.eye(2), -shift)), folder / "query.nii.gz")
    points = salient_landmarks(template, 8)
    lines = ["x,y,label", *(f"{x},{y},S{i}" for i, (x, y) in enumerate(points))]
    (folder / "points.csv").write_text("\n".join(lines) + "\n")
    return folder, points + shift


def test_2d_landmarks_with_mind(slice_pair):
    folder, truth = slice_pair
    out, qa = folder / "found.csv", folder / "found.png"
    args = (folder / "template.nii.gz", folder / "points.csv", folder / "query.nii.gz")
    result = run("landmarks", *args, "--out", out, "--features", "mind", "--qa", qa)
    assert result.exit_code == 0, result.output
    header, rows = read_rows(out)
    assert header == ["x", "y", "label", *RESULT]
    errors = np.linalg.norm(coordinates(rows, "xy") - truth, axis=1)
    assert errors.max() < 1.5, errors  # pixels are 1 mm
    assert matplotlib.image.imread(qa).shape[0] > 300


def test_2d_slicer_points(slice_pair):
    """Slicer points on a 2D image have z = 0: read as 2D, written back with z = 0."""
    folder, truth = slice_pair
    points = read_points_table(folder / "points.csv").points_mm
    labels = [f"S{i}" for i in range(len(points))]
    write_markups_json(folder / "points.mrk.json", points, labels, "slice")
    out = folder / "found.mrk.json"
    args = (folder / "template.nii.gz", folder / "points.mrk.json", folder / "query.nii.gz")
    result = run("landmarks", *args, "--out", out)
    assert result.exit_code == 0, result.output
    found, found_labels = read_markups_json(out)
    assert found_labels == labels and not found[:, 2].any()
    assert np.linalg.norm(found[:, :2] - truth, axis=1).max() < 1.5


def test_existing_output_needs_force(slice_pair):
    folder, truth = slice_pair
    out = folder / "kept.csv"
    out.write_text("keep me")
    args = (
        "landmarks",
        folder / "template.nii.gz",
        folder / "points.csv",
        folder / "query.nii.gz",
        "--out",
        out,
    )
    refused = run(*args)
    assert refused.exit_code == 2 and "--force" in one_error_line(refused)
    assert out.read_text() == "keep me"
    forced = run(*args, "--force")  # a 2D pair: MIND without asking
    assert forced.exit_code == 0, forced.output
    assert "mind features" in forced.output and len(read_rows(out)[1]) == len(truth)


VOL, FLAT = ("vol", "vol"), ("flat", "flat")


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    """Tiny random 3D (0-46 mm) and 2D images: enough to reach every input check, no search."""
    folder = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(0)
    save(from_array(rng.random((24, 24, 24)).astype(np.float32), (2.0,) * 3), folder / "vol.nii.gz")
    save(from_array(rng.random((24, 24)).astype(np.float32), (2.0,) * 2), folder / "flat.nii.gz")
    return folder


@pytest.mark.parametrize(
    "points, text, images, options, words",
    [
        ("nope.csv", None, VOL, (), "cannot read"),
        ("p.mrk.json", "{not json", VOL, (), "not a JSON file"),
        ("p.csv", "1,2,3\n4,5,6\n", VOL, (), "no header row"),
        ("p.csv", "a,b,c\n1,2,3\n", VOL, (), "no x,y[,z] columns"),
        ("p.csv", "x,y,z\n1,two,3\n", VOL, (), "y='two' is not a number"),
        ("p.csv", "x,y,z\n1,nan,3\n", VOL, (), "NaN"),
        ("p.csv", "x,y,z\n", VOL, (), "no data rows"),
        ("p.csv", "x,y\n10,10\n", VOL, (), "2D points but the image is 3D"),
        ("p.csv", "x,y,z\n10,10,10\n", FLAT, (), "3D points but the image is 2D"),
        ("p.csv", "x,y,z\n10,10,10\n500,0,0\n", VOL, (), "1 point(s) lie outside"),
        ("p.csv", "x,y\n10,10\n", FLAT, ("--features", "uae"), "--features mind"),
        ("p.csv", "x,y\n10,10\n", FLAT, ("--weights", "w.pt"), "goes with --features uae"),
        ("p.csv", "x,y,z\n10,10,10\n", ("vol", "flat"), (), "3D and 2D"),
    ],
)
def test_bad_input_is_one_line(small_images, tmp_path, points, text, images, options, words):
    if text is not None:
        (tmp_path / points).write_text(text)
    template, query = (small_images / f"{name}.nii.gz" for name in images)
    out = tmp_path / "found.csv"
    result = run("landmarks", template, tmp_path / points, query, "--out", out, *options)
    assert result.exit_code == 2 and words in one_error_line(result)
    assert not out.exists()


def test_bad_output_suffix(small_images, tmp_path):
    (tmp_path / "p.csv").write_text("x,y,z\n10,10,10\n")
    vol = small_images / "vol.nii.gz"
    result = run("track", vol, tmp_path / "p.csv", vol, "--out", tmp_path / "found.txt")
    assert result.exit_code == 2 and "not a points table format" in one_error_line(result)


def test_help_lists_both_commands():
    listing = run("--help").output
    assert re.search(r"\n\s*landmarks\s+Find landmarks placed on TEMPLATE in QUERY\.", listing)
    assert re.search(r"\n\s*track\s+Find the lesions of BASELINE in FOLLOWUP\.", listing)


def test_output_replaces_earlier_result_columns(tmp_path):
    """A table written by a run can be searched again: its result columns are replaced, not doubled."""
    path = tmp_path / "p.csv"
    path.write_text("x,y,score,reliable,round_trip_mm,label\n1,2,0.5,false,9.00,a\n")
    table = read_points_table(path)
    found = Located(np.array([[3.0, 4.0]]), np.array([0.98765]), np.array([0.5]), np.array([True]))
    write_points_table(path, table, found)
    assert path.read_text() == "x,y,label,score,reliable,round_trip_mm\n3.0,4.0,a,0.988,true,0.50\n"


@pytest.mark.parametrize(
    "reliable, expected",
    [
        ([1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 2, 4, 6, 8]),
        ([1, 0, 1, 0, 1, 1, 0, 1, 1], [0, 1, 4, 6, 8]),
        ([0, 0, 0, 0, 0, 0, 0, 1, 1], [1, 2, 5, 7, 8]),
    ],
)
def test_qa_shows_unreliable_points_first(reliable, expected):
    score = np.array([0.9, 0.5, 0.3, 0.8, 0.7, 0.4, 0.6, 0.9, 0.9])
    np.testing.assert_array_equal(shown_points(np.array(reliable, bool), score, 5), expected)
