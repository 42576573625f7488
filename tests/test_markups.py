import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crossreg.errors import CrossregError
from crossreg.markups import (
    read_landmarks_csv,
    read_markups_json,
    read_matches_csv,
    write_markups_json,
    write_matches_csv,
)


def _random_matches(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(0, 50, (n, d)),
        rng.normal(0, 50, (n, d)),
        rng.uniform(size=n) < 0.5,
        rng.uniform(size=n),
    )


@pytest.mark.parametrize("d", [2, 3])
def test_matches_csv_round_trip(tmp_path, d):
    fixed, moving, inlier, dist = _random_matches(17, d)
    path = tmp_path / "matches.csv"
    write_matches_csv(path, fixed, moving, inlier, dist)
    f2, m2, i2 = read_matches_csv(path)
    np.testing.assert_array_equal(f2, fixed)
    np.testing.assert_array_equal(m2, moving)
    np.testing.assert_array_equal(i2, inlier)
    header = path.read_text().splitlines()[0]
    z = ",fixed_z" if d == 3 else ""
    assert header.startswith(f"id,fixed_x,fixed_y{z},moving_x")
    assert header.endswith(",inlier,confidence")
    assert [p.name for p in tmp_path.iterdir()] == ["matches.csv"]  # no temp file left behind


def test_matches_csv_without_confidence_leaves_column_empty(tmp_path):
    fixed, moving, inlier, _ = _random_matches(3, 3)
    path = tmp_path / "m.csv"
    write_matches_csv(path, fixed, moving, inlier, None)
    rows = path.read_text().splitlines()[1:]
    assert all(r.endswith(",") for r in rows)
    assert [r.split(",")[7] for r in rows] == [str(int(v)) for v in inlier]


def test_matches_csv_rejects_mismatched_shapes(tmp_path):
    fixed, moving, inlier, _ = _random_matches(5, 3)
    with pytest.raises(ValueError, match="disagree"):
        write_matches_csv(tmp_path / "m.csv", fixed, moving[:4], inlier)


@settings(max_examples=40, deadline=None)
@given(
    d=st.sampled_from([2, 3]),
    data=st.data(),
)
def test_matches_csv_round_trip_random_floats(d, data):
    n = data.draw(st.integers(1, 12))
    floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
    fixed = data.draw(arrays(np.float64, (n, d), elements=floats))
    moving = data.draw(arrays(np.float64, (n, d), elements=floats))
    inlier = data.draw(arrays(np.bool_, (n,)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.csv"
        write_matches_csv(path, fixed, moving, inlier)
        f2, m2, i2 = read_matches_csv(path)
    np.testing.assert_array_equal(f2, fixed)
    np.testing.assert_array_equal(m2, moving)
    np.testing.assert_array_equal(i2, inlier)


def test_matches_csv_without_inlier_column_are_all_inliers(tmp_path):
    path = tmp_path / "hand.csv"
    path.write_text("fixed_x,fixed_y,moving_x,moving_y\n1,2,3,4\n5,6,7,8\n")
    fixed, moving, inlier = read_matches_csv(path)
    assert fixed.shape == (2, 2) and inlier.all()
    np.testing.assert_array_equal(moving[1], [7, 8])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "id,fixed_x,fixed_y,fixed_z,moving_x,moving_y,moving_z,inlier\n0,1,2,3,4,5,6,1\n1,1,abc,3,4,5,6,1\n",
            r"line 3: fixed_y='abc' is not a number",
        ),
        (
            "id,fixed_x,fixed_y,fixed_z,moving_x,moving_y,inlier\n0,1,2,3,4,5,1\n",
            r"missing column\(s\) moving_z",
        ),
        ("id,fixed_x,fixed_y,moving_x,moving_y,inlier\n0,1,2,3,4,maybe\n", r"line 2: inlier='maybe'"),
        ("id,fixed_x,fixed_y,moving_x,moving_y,inlier\n0,1,2,3\n", r"line 2: 4 values"),
        ("id,fixed_x,fixed_y,moving_x,moving_y,inlier\n", "no data rows"),
        ("1,2,3,4,5,6\n", "no header row"),
    ],
)
def test_malformed_matches_csv_raises_useful_error(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CrossregError, match=message):
        read_matches_csv(path)


def test_missing_file_raises_crossreg_error(tmp_path):
    with pytest.raises(CrossregError, match="cannot read"):
        read_matches_csv(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    "text",
    [
        "x,y,z\n1,2,3\n4,5,6\n",
        "label,x,y,z\nA,1,2,3\nB,4,5,6\n",
        "id,x,y,z\n1,1,2,3\n2,4,5,6\n",
        "1,2,3\n4,5,6\n",
        "A,1,2,3\nB,4,5,6\n",
        "1,1,2,3\n2,4,5,6\n",
        "X, Y, Z, comment\n1, 2, 3, first\n4, 5, 6, second\n",
    ],
)
def test_landmarks_csv_layouts(tmp_path, text):
    path = tmp_path / "lm.csv"
    path.write_text(text)
    np.testing.assert_array_equal(read_landmarks_csv(path), [[1, 2, 3], [4, 5, 6]])


def test_landmarks_csv_2d(tmp_path):
    path = tmp_path / "lm.csv"
    path.write_text("label,x,y\np1,1.5,-2\n")
    np.testing.assert_array_equal(read_landmarks_csv(path), [[1.5, -2.0]])


def test_landmarks_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("x,y,z\n1,2,3\n", encoding="utf-8-sig")  # what spreadsheets save as "CSV UTF-8"
    np.testing.assert_array_equal(read_landmarks_csv(path), [[1, 2, 3]])


def test_landmarks_fcsv_ras_is_converted_to_lps(tmp_path):
    path = tmp_path / "lm.fcsv"
    path.write_text(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "vtkMRMLMarkupsFiducialNode_0,10,-20,30,0,0,0,1,1,1,0,F-1,,\n"
    )
    np.testing.assert_array_equal(read_landmarks_csv(path), [[-10.0, 20.0, 30.0]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3,4,5\n", "5 columns without a header"),
        ("x,y,z\n1,2,oops\n", r"line 2: z='oops'"),
        ("a,b,c\n1,2,3\n", "no x,y\\[,z\\] columns"),
        ("x,y,z\n1,2,nan\n", "finite"),
    ],
)
def test_malformed_landmarks_csv_raises(tmp_path, text, message):
    path = tmp_path / "lm.csv"
    path.write_text(text)
    with pytest.raises(CrossregError, match=message):
        read_landmarks_csv(path)


def test_markups_json_round_trip_3d(tmp_path):
    points = np.array([[-53.25, -73.5, 12.0], [49.875, 88.5, -3.0]])
    path = tmp_path / "lm.mrk.json"
    write_markups_json(path, points, ["F-1", "F-2"], "landmarks")
    read, labels = read_markups_json(path)
    np.testing.assert_array_equal(read, points)
    assert labels == ["F-1", "F-2"]


def test_markups_json_has_slicer_layout(tmp_path):
    path = tmp_path / "lm.mrk.json"
    write_markups_json(path, np.array([[1.0, 2.0, 3.0]]), ["a"], "fixed landmarks")
    doc = json.loads(path.read_text())
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    (markup,) = doc["markups"]
    assert markup["type"] == "Fiducial"
    assert markup["coordinateSystem"] == "LPS"
    assert markup["name"] == "fixed landmarks"
    (cp,) = markup["controlPoints"]
    required = {
        "id",
        "label",
        "position",
        "orientation",
        "selected",
        "locked",
        "visibility",
        "positionStatus",
    }
    assert required <= set(cp)
    assert cp["positionStatus"] == "defined" and cp["position"] == [1.0, 2.0, 3.0]
    assert isinstance(cp["id"], str) and len(cp["orientation"]) == 9


def test_markups_json_2d_points_get_zero_z(tmp_path):
    path = tmp_path / "lm.mrk.json"
    write_markups_json(path, np.array([[1.0, 2.0], [3.0, 4.0]]), ["a", "b"], "2d")
    read, _ = read_markups_json(path)
    np.testing.assert_array_equal(read, [[1, 2, 0], [3, 4, 0]])


def test_markups_json_ras_file_is_converted_to_lps(tmp_path):
    path = tmp_path / "ras.mrk.json"
    path.write_text(
        '{"@schema": "x", "markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": ['
        '{"label": "F-1", "position": [-53.4, -73.3, 10.0]},'
        '{"label": "F-2", "position": [49.9, 88.6, -2.5], "positionStatus": "defined"}]}]}'
    )
    points, labels = read_markups_json(path)
    np.testing.assert_allclose(points, [[53.4, 73.3, 10.0], [-49.9, -88.6, -2.5]])
    assert labels == ["F-1", "F-2"]


def test_markups_json_micrometres_are_converted(tmp_path):
    path = tmp_path / "um.mrk.json"
    path.write_text(
        '{"markups": [{"type": "Fiducial", "coordinateUnits": "um", '
        '"controlPoints": [{"label": "a", "position": [1000, 2000, -500]}]}]}'
    )
    np.testing.assert_allclose(read_markups_json(path)[0], [[1.0, 2.0, -0.5]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not a JSON file"),
        ('{"points": []}', "no 'markups' list"),
        ('{"markups": [{"type": "Fiducial", "controlPoints": []}]}', "no control points"),
        (
            '{"markups": [{"controlPoints": [{"label": "p", "positionStatus": "undefined"}]}]}',
            "'p' has no defined",
        ),
        ('{"markups": [{"coordinateSystem": "XYZ", "controlPoints": [{"position": [1, 2, 3]}]}]}', "'XYZ'"),
        (
            '{"markups": [{"controlPoints": [{"label": "n", "position": [NaN, 2, 3]}]}]}',
            "'n' has no defined, finite",
        ),
        ('{"markups": [{"controlPoints": [{"label": "i", "position": [1, Infinity, 3]}]}]}', "'i' has no"),
        ('{"markups": [{"controlPoints": [{"label": "h", "position": [1, 2, 1' + "0" * 400 + "]}]}]}", "'h'"),
    ],
)
def test_malformed_markups_json_raises(tmp_path, text, message):
    path = tmp_path / "bad.mrk.json"
    path.write_text(text)
    with pytest.raises(CrossregError, match=message):
        read_markups_json(path)


@settings(max_examples=30, deadline=None)
@given(
    points=arrays(
        np.float64,
        st.tuples(st.integers(1, 8), st.just(3)),
        elements=st.floats(-1e4, 1e4, allow_nan=False, width=64),
    )
)
def test_markups_json_round_trip_random(points):
    labels = [f"P{i}" for i in range(len(points))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.mrk.json"
        write_markups_json(path, points, labels, "random")
        read, read_labels = read_markups_json(path)
    np.testing.assert_array_equal(read, points)
    assert read_labels == labels
