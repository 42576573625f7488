"""Fuzzing the readers: whatever bytes or text they get, they return a valid result or a CrossregError.

Each property runs a fixed, derandomised set of examples (the same on every run) small enough for CI.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossreg.errors import CrossregError
from crossreg.image import MIN_SIZE, Image
from crossreg.imageio import load
from crossreg.markups import read_landmarks_csv, read_markups_json, read_matches_csv, write_matches_csv

FUZZ = settings(
    derandomize=True, deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".png")


def _valid_file_bytes(suffix: str) -> bytes:
    """A small valid image file (16^3 float volume, or a 16x16 8-bit PNG)."""
    rng = np.random.default_rng(0)
    if suffix == ".png":
        itk = sitk.GetImageFromArray((rng.random((16, 16)) * 255).astype(np.uint8))
    else:
        itk = sitk.GetImageFromArray(rng.random((16, 16, 16)).astype(np.float32))
        itk.SetSpacing((1.0, 1.5, 2.0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"v{suffix}"
        sitk.WriteImage(itk, str(path))
        return path.read_bytes()


VALID = {suffix: _valid_file_bytes(suffix) for suffix in IMAGE_SUFFIXES}


def _load_or_crossreg_error(data: bytes, suffix: str) -> Image | None:
    """``load`` of ``data`` in a file ending in ``suffix``: the Image, or None after a CrossregError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(data)
        try:
            image = load(path)
        except CrossregError:
            return None
    assert image.ndim in (2, 3) and min(image.array.shape) >= MIN_SIZE
    assert np.all(np.isfinite(image.array)) and np.all(np.asarray(image.spacing_mm) > 0)
    return image


def test_the_seed_files_are_valid():
    # The mutations start from files that load, so a mutation is what makes a fuzzed file fail.
    for suffix, data in VALID.items():
        assert _load_or_crossreg_error(data, suffix) is not None, suffix


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(IMAGE_SUFFIXES))
def test_random_bytes_are_an_image_or_a_crossreg_error(data, suffix):
    _load_or_crossreg_error(data, suffix)


@FUZZ
@given(
    suffix=st.sampled_from(IMAGE_SUFFIXES),
    edits=st.lists(st.tuples(st.integers(0, 399), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.none() | st.integers(0, 4096),
)
def test_mutated_headers_are_an_image_or_a_crossreg_error(suffix, edits, cut):
    raw = bytearray(VALID[suffix])
    for at, value in edits:  # header bytes: NIfTI's 348, NRRD's and MHA's text, PNG's chunks
        raw[at % len(raw)] = value
    _load_or_crossreg_error(bytes(raw[:cut] if cut is not None else raw), suffix)


@FUZZ
@given(text=st.text(max_size=400))
def test_random_text_is_points_or_a_crossreg_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.csv"
        path.write_text(text, errors="surrogatepass")
        for read in (read_matches_csv, read_landmarks_csv):
            try:
                out = read(path)
            except CrossregError:
                continue
            for array in out if isinstance(out, tuple) else (out,):
                assert np.all(np.isfinite(array.astype(float)))


def _valid_matches_csv() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.csv"
        rng = np.random.default_rng(1)
        write_matches_csv(path, rng.normal(size=(3, 3)), rng.normal(size=(3, 3)), [True, False, True])
        return path.read_text()


VALID_CSV = _valid_matches_csv()


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from([*",\n\r\"'# .-e+x", "nan", "inf", "", "\ufeff"])),
        min_size=1,
        max_size=8,
    )
)
def test_mutated_matches_csv_is_points_or_a_crossreg_error(edits):
    text = VALID_CSV
    for at, piece in edits:
        at %= len(text)
        text = text[:at] + piece + text[at + 1 :]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.csv"
        path.write_text(text)
        try:
            fixed, moving, inlier = read_matches_csv(path)
        except CrossregError:
            return
    assert fixed.shape == moving.shape and len(inlier) == len(fixed)
    assert np.all(np.isfinite(fixed)) and np.all(np.isfinite(moving))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ODD_NUMBERS = [math.nan, math.inf, -math.inf, 10**400, True, "1.5"]
COORDINATE = st.floats() | st.integers() | st.sampled_from(ODD_NUMBERS)
CONTROL_POINT = st.fixed_dictionaries(
    {"position": st.lists(COORDINATE, min_size=3, max_size=3) | st.lists(COORDINATE, max_size=4) | JSON},
    optional={"label": JSON, "positionStatus": st.sampled_from(["defined", "undefined"]) | JSON},
)
MARKUP = st.fixed_dictionaries(
    {"controlPoints": st.lists(CONTROL_POINT, min_size=1, max_size=3)},
    optional={
        "coordinateSystem": st.sampled_from(["LPS", "RAS", "XYZ"]) | JSON,
        "coordinateUnits": st.sampled_from(["mm", "um", "cm"]) | JSON,
    },
)


def _points_or_crossreg_error(doc: object) -> None:
    """``read_markups_json`` of ``doc`` gives finite (N, 3) points with N labels, or a CrossregError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.mrk.json"
        path.write_text(json.dumps(doc))  # NaN and Infinity are written as JSON's NaN / Infinity extensions
        try:
            points, labels = read_markups_json(path)
        except CrossregError:
            return
    assert points.shape == (len(labels), 3)
    assert np.all(np.isfinite(points))


@FUZZ
@given(doc=st.fixed_dictionaries({"markups": st.lists(MARKUP, min_size=1, max_size=2)}))
def test_markups_with_fuzzed_fields_are_points_or_a_crossreg_error(doc):
    _points_or_crossreg_error(doc)


@FUZZ
@given(doc=st.fixed_dictionaries({"markups": st.lists(JSON, max_size=3) | JSON}) | JSON)
def test_any_json_is_points_or_a_crossreg_error(doc):
    _points_or_crossreg_error(doc)
