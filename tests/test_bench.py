"""Benchmark harness: cases (synthetic and folders), baselines' transform direction, scoring, report files."""

import json
import math
from dataclasses import replace
from functools import partial

import numpy as np
import pytest

from crossreg import datasets
from crossreg.deformation import DeformableTransform
from crossreg.errors import CrossregError
from crossreg.evaluate.baselines import (
    Method,
    MethodOutput,
    crossreg_method,
    crossreg_methods,
    elastix_rigid,
    identity,
    sitk_rigid,
)
from crossreg.evaluate.bench import run_bench
from crossreg.evaluate.cases import BenchCase, folder_cases, synthetic_cases
from crossreg.evaluate.scoring import CaseResult, score, summarize
from crossreg.features import FEATURES
from crossreg.image import Image
from crossreg.imageio import save
from crossreg.markups import write_markups_json
from crossreg.synth.cases import make_case
from crossreg.synth.geometry import extract_slice
from crossreg.synth.pairs import write_pair
from crossreg.transform import AffineTransform


def bench_case(case, name: str | None = None) -> BenchCase:
    return BenchCase(
        name or case.name,
        case.kind,
        case.fixed,
        case.moving,
        case.true_transform,
        case.landmarks_fixed_mm,
        case.landmarks_moving_mm,
    )


def tre(case: BenchCase, transform: AffineTransform) -> float:
    return float(
        np.linalg.norm(transform.apply(case.landmarks_fixed_mm) - case.landmarks_moving_mm, axis=1).mean()
    )


@pytest.fixture(scope="module")
def small_motion_cases():
    """'same' modality, full view, 5 deg / 5 mm: a 2D slice and the 2 mm volume."""
    t1 = datasets.mni152_t1(2)
    return [bench_case(make_case(im, "same", 5.0, 5.0, seed=3)) for im in (extract_slice(t1, "axial"), t1)]


# ---------------------------------------------------------------- transform direction of every baseline


def check_direction(run, cases) -> None:
    for case in cases:
        out = run(case.fixed, case.moving, 0)
        assert out.failed is None, out.failed
        assert tre(case, out.transform) < 1.0, case.name
        # The inverse (a direction mix-up) is off by about twice the motion.
        assert tre(case, out.transform.inverse()) > 5.0


def test_simpleitk_direction(small_motion_cases):
    check_direction(sitk_rigid, small_motion_cases)


def test_ants_direction(small_motion_cases):
    pytest.importorskip("ants")
    from crossreg.evaluate.baselines import AntsRigidConfig, ants_rigid

    # ANTs' default 20% sampling gives the slice's 6x-shrunk first level ~30 samples: 3% of seeds then
    # end 1.4-47 mm off. Every voxel failed none of 200 seeds; the volume (~800) none of 65 at 20%.
    slice_2d, volume = small_motion_cases
    dense = partial(ants_rigid, config=AntsRigidConfig(sampling_rate=1.0))
    check_direction(dense, [slice_2d])
    check_direction(ants_rigid, [volume])
    # With one ITK thread (conftest.py) a seed's answer is exact: multi-threaded, it varies in every run.
    first, again = (dense(slice_2d.fixed, slice_2d.moving, 0).transform for _ in range(2))
    assert np.array_equal(first.homogeneous(), again.homogeneous())


def test_elastix_direction(small_motion_cases):
    itk = pytest.importorskip("itk")
    if not hasattr(itk, "elastix_registration_method"):
        pytest.skip("itk-elastix is not installed")
    check_direction(elastix_rigid, small_motion_cases)


# ---------------------------------------------------------------- the harness end to end


def test_smoke_run_writes_report(tmp_path):
    t2 = synthetic_cases(("t2",), 1, seed=0, ndim=2)
    moving = t2[0].moving
    noise = moving.with_array(np.random.default_rng(0).random(moving.array.shape), moving.mask)
    hopeless = replace(t2[0], name="noise", moving=noise)
    methods = [Method("identity", identity), crossreg_method(), Method("simpleitk-mi", sitk_rigid)]
    methods.append(Method("ghost", identity, ("no_such_module_xyz",)))
    seen = []
    report = run_bench(
        [*t2, hopeless], methods, tmp_path / "out", command="pytest", on_progress=lambda *a: seen.append(a)
    )

    assert [p.name for p in report.files] == ["results.json", "results.md", "tre.png"]
    assert all(p.stat().st_size > 0 for p in report.files)
    assert [s[:2] for s in seen] == [(i, 6) for i in range(1, 7)]
    by = {(r.case, r.method): r for r in report.results}
    case = t2[0].name
    assert by[case, "identity"].tre_mm == pytest.approx(by[case, "identity"].initial_tre_mm)
    assert by[case, "identity"].initial_tre_mm > 10.0
    assert by[case, "crossreg"].tre_mm < 2.0 and by[case, "crossreg"].success
    assert by[case, "crossreg"].precision > 0.5
    assert by["noise", "crossreg"].failed and "need" in by["noise", "crossreg"].failed
    assert math.isnan(by["noise", "crossreg"].tre_mm) and not by["noise", "crossreg"].success
    assert report.skipped["ghost"].startswith("not installed")

    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["command"] == "pytest" and len(saved["results"]) == 6
    assert saved["failures"]["crossreg"][0]["case"] == "noise"
    assert saved["auc_mm"] == [3.0, 5.0, 10.0] and len(saved["summaries"][0]["auc"]) == 3
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| crossreg |" in md and "ghost: not installed" in md and "`pytest`" in md
    assert "| AUC@3 mm | AUC@5 mm | AUC@10 mm |" in md


def test_crashing_method_is_recorded_not_raised(tmp_path):
    def crash(fixed: Image, moving: Image, seed: int) -> MethodOutput:
        raise RuntimeError("boom")

    case = synthetic_cases(("same",), 1, ndim=2)
    report = run_bench(case, [Method("crash", crash)], tmp_path)
    assert report.results[0].failed == "RuntimeError: boom"
    assert report.failures() == {"crash": [(case[0].name, "RuntimeError: boom")]}


# ---------------------------------------------------------------- scoring on hand-made numbers


def result(kind, method, tre_mm, seconds=1.0, precision=None, initial=20.0):
    failed = "gave up" if math.isnan(tre_mm) else None
    return CaseResult(
        "c", kind, method, initial, tre_mm, tre_mm, tre_mm <= 3.0, precision, None, seconds, failed
    )


def test_summaries_on_hand_made_numbers():
    rows = [
        result("t2", "a", 1.0, 2.0, 0.5, initial=10.0),
        result("t2", "a", 2.0, 4.0, 1.0, initial=20.0),
        result("t2", "a", 9.0, 6.0, None, initial=30.0),
        result("t2", "a", float("nan"), 100.0),
        result("ct", "a", float("nan"), 3.0),
    ]
    t2, ct, everything = summarize(rows)
    assert (t2.kind, t2.n_cases, t2.n_failed, t2.n_wrong) == ("t2", 4, 1, 1)  # 9 mm: an answer, wrong
    assert t2.mean_mm == pytest.approx(4.0) and t2.median_mm == pytest.approx(2.0)
    assert t2.p90_mm == pytest.approx(7.6)  # numpy's linear percentile of (1, 2, 9)
    assert t2.success_rate == pytest.approx(0.5)  # the failure counts as unsuccessful
    # Areas: (1 - 1/t) + (1 - 2/t) + max(0, 1 - 9/t) + 0 (the failure), over 4 cases.
    assert t2.auc == pytest.approx(((2 / 3 + 1 / 3) / 4, (0.8 + 0.6) / 4, (0.9 + 0.8 + 0.1) / 4))
    assert t2.precision == pytest.approx(0.75)
    assert t2.median_seconds == pytest.approx(5.0)
    assert t2.initial_mean_mm == pytest.approx(20.0)
    assert ct.n_failed == 1 and math.isnan(ct.mean_mm) and ct.success_rate == 0.0 and ct.precision is None
    assert ct.n_wrong == 0  # a refusal is not a wrong answer
    assert (
        everything.kind == "all" and everything.n_cases == 5 and everything.success_rate == pytest.approx(0.4)
    )


def test_score_of_matches_and_failures():
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    shift = AffineTransform(np.eye(2), np.array([3.0, 4.0]), "rigid")
    img = synthetic_cases(("same",), 1, ndim=2)[0].fixed
    case = BenchCase("c", "k", img, img, shift, pts, shift.apply(pts))
    matches = (pts, shift.apply(pts) + np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]))
    scored = score(case, "m", MethodOutput(AffineTransform.identity(2), 1.5, matches))
    assert scored.tre_mm == pytest.approx(5.0) and scored.initial_tre_mm == pytest.approx(5.0)
    assert scored.precision == pytest.approx(2 / 3) and scored.n_matches == 3 and not scored.success
    failed = score(case, "m", MethodOutput(None, 0.1, None, "no luck"))
    assert math.isnan(failed.tre_mm) and failed.failed == "no luck" and failed.precision is None


def test_a_known_negative_is_won_by_refusing():
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    shift = AffineTransform(np.eye(2), np.array([3.0, 4.0]), "rigid")
    img = synthetic_cases(("same",), 1, ndim=2)[0].fixed
    case = BenchCase("c", "us-mirror", img, img, shift, pts, shift.apply(pts), negative=True)
    answered = score(case, "m", MethodOutput(shift, 1.0))  # even the landmarks' own map is wrong
    refused = score(case, "m", MethodOutput(None, 1.0, None, "confidence 0.1 < 0.5"))
    assert answered.tre_mm == pytest.approx(0.0) and not answered.success and refused.success
    (summary,) = summarize([answered, refused])
    assert summary.success_rate == 0.5 and summary.n_wrong == 1 and summary.n_failed == 1


# ---------------------------------------------------------------- synthetic cases


def test_synthetic_cases_reproducible_partial_anisotropic():
    a = synthetic_cases(("t2", "random"), 3, seed=5, ndim=2)
    b = synthetic_cases(("random",), 3, seed=5, ndim=2)
    assert [c.name for c in a[3:]] == [c.name for c in b]  # adding a kind changes no other case
    assert np.array_equal(a[3].moving.array, b[0].moving.array)
    assert a[0].name != synthetic_cases(("t2",), 1, seed=6, ndim=2)[0].name
    for c in a:
        assert c.true_transform.rotation_deg() == pytest.approx(15.0)
        assert max(c.moving.spacing_mm) > min(c.moving.spacing_mm)
        assert 0.3 < c.moving.mask.mean() < 1.0  # partial view, cropped to it
        assert c.moving.grid.contains(c.landmarks_moving_mm).all()
        assert np.allclose(c.true_transform.apply(c.landmarks_fixed_mm), c.landmarks_moving_mm)


def test_slab_cases_are_thin_axial_t2_slabs_of_the_head():
    cases = synthetic_cases(("slab",), 2, seed=3)
    for c in cases:
        assert c.kind == "slab" and "-slab-t2-" in c.name
        axis = c.true_transform.matrix @ np.array([0.0, 0.0, 1.0])  # the fixed z axis, in the moving image
        voxels = np.argwhere(c.moving.valid_mask())[:, ::-1].astype(float)
        assert np.ptp(c.moving.grid.index_to_world(voxels) @ axis) < 55.0  # 15-25% of a ~150 mm head
        assert np.ptp(c.landmarks_fixed_mm[:, 2]) < 0.5 * np.ptp(c.landmarks_fixed_mm[:, 0])
        assert np.allclose(c.true_transform.apply(c.landmarks_fixed_mm), c.landmarks_moving_mm)
    assert cases[0].name == synthetic_cases(("t2", "slab"), 1, seed=3)[1].name


def test_family_cases_are_the_bench_slices_in_the_matchers_modality_families():
    kinds = ("family-edges", "family-emission", "family-texture")
    cases = synthetic_cases(kinds, 3, seed=8, ndim=2)
    plain = synthetic_cases(("t2",), 3, seed=8, ndim=2)
    for i, c in enumerate(cases):
        assert c.kind == kinds[i // 3] and f"-{c.kind}-15deg-15mm-fov" in c.name
        assert np.array_equal(c.fixed.array, plain[i % 3].fixed.array)  # the bench's own slices
        assert c.true_transform.rotation_deg() == pytest.approx(15.0)
        centre = c.fixed.grid.center_mm()
        assert np.linalg.norm(c.true_transform.apply(centre[None])[0] - centre) == pytest.approx(15.0)
        assert max(c.moving.spacing_mm) > min(c.moving.spacing_mm)
        assert 0.3 < c.moving.mask.mean() < 1.0  # partial view, cropped to it
        assert len(c.landmarks_fixed_mm) == 20 and c.moving.grid.contains(c.landmarks_moving_mm).all()
        assert np.allclose(c.true_transform.apply(c.landmarks_fixed_mm), c.landmarks_moving_mm)
    assert cases[3].name == synthetic_cases(("family-emission",), 1, seed=8, ndim=2)[0].name


def test_fine_ultrasound_cases_are_cones_at_scanner_resolution_on_the_1mm_mri():
    (case,) = synthetic_cases(["us-fine"], n_per_kind=1, seed=3)
    spacing = np.asarray(case.moving.spacing_mm)
    assert np.ptp(spacing) == 0 and 0.6 <= spacing[0] <= 0.9, spacing  # isotropic, finer than the MRI
    assert case.fixed.spacing_mm == (1.0, 1.0, 1.0) and case.kind == "us-fine"
    # A cone, not the head: a small part of the MRI's extent, and every landmark inside it
    assert np.prod(np.asarray(case.moving.array.shape) * spacing) < 0.5 * np.prod(case.fixed.array.shape)
    assert case.moving.grid.contains(case.landmarks_moving_mm).all() and len(case.landmarks_moving_mm) >= 10
    moved = case.true_transform.apply(case.landmarks_fixed_mm)
    np.testing.assert_allclose(moved, case.landmarks_moving_mm, atol=1e-6)
    with pytest.raises(CrossregError, match="3D only"):
        synthetic_cases(["us-fine"], n_per_kind=1, ndim=2)


def test_family_kinds_are_2d_only():
    with pytest.raises(CrossregError, match=r"family-edges are 2D only.*--ndim 2"):
        synthetic_cases(("t2", "family-edges"), 1, ndim=3)


# ---------------------------------------------------------------- real data in folders


HEADER = "fixed_x,fixed_y,fixed_z,moving_x,moving_y,moving_z"


@pytest.fixture(scope="module")
def pair3d():
    return make_case(datasets.mni152_t1(2), "ct", 10.0, 10.0, seed=2)


def write_folder(folder, pair, landmarks: str = "csv"):
    folder.mkdir(parents=True)
    save(pair.fixed, folder / "fixed.nii.gz")
    save(pair.moving, folder / "moving.nrrd")
    pf, pm = pair.landmarks_fixed_mm, pair.landmarks_moving_mm
    if landmarks == "csv":
        rows = [",".join(repr(float(v)) for v in (*f, *m)) for f, m in zip(pf, pm, strict=True)]
        (folder / "landmarks.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    else:
        labels = [f"L{i}" for i in range(len(pf))]
        write_markups_json(folder / "landmarks_fixed.mrk.json", pf, labels, "fixed")
        write_markups_json(folder / "landmarks_moving.mrk.json", pm, labels, "moving")


def test_folder_cases_read_the_documented_layout(tmp_path, pair3d):
    write_folder(tmp_path / "RESECT" / "case2", pair3d, "mrk")
    write_folder(tmp_path / "RESECT" / "case1", pair3d, "csv")
    cases = folder_cases(tmp_path / "RESECT")
    assert [(c.name, c.kind, c.true_transform) for c in cases] == [
        ("case1", "RESECT", None),
        ("case2", "RESECT", None),
    ]
    for case in cases:
        assert np.allclose(case.landmarks_fixed_mm, pair3d.landmarks_fixed_mm)
        assert np.allclose(case.moving.direction, pair3d.moving.direction)
        truth = score(case, "truth", MethodOutput(pair3d.true_transform, 0.0))
        assert truth.tre_mm < 1e-6 and truth.initial_tre_mm > 5.0
    assert folder_cases(tmp_path / "RESECT" / "case1", kind="x")[0].kind == "x"  # a case folder itself


def test_a_synth_pair_folder_is_a_case_with_its_truth(tmp_path, pair3d):
    write_pair(pair3d, tmp_path / "pair")
    (case,) = folder_cases(tmp_path / "pair", kind="ct")
    np.testing.assert_allclose(case.true_transform.matrix, pair3d.true_transform.matrix, atol=1e-9)
    np.testing.assert_allclose(case.landmarks_moving_mm, pair3d.landmarks_moving_mm)
    truth = score(case, "truth", MethodOutput(pair3d.true_transform, 0.0, pair3d_matches(pair3d)))
    assert truth.tre_mm < 1e-6 and truth.precision == 1.0


@pytest.mark.parametrize("kind", ["t2-shift", "us-shift"])
def test_shift_cases_have_a_nonlinear_truth_that_survives_the_folder(tmp_path, kind):
    (case,) = synthetic_cases([kind], n_per_kind=1, seed=0, ndim=2)
    assert isinstance(case.true_transform, DeformableTransform) and kind in case.name
    matches = (case.landmarks_fixed_mm, case.landmarks_moving_mm)
    truth = score(case, "truth", MethodOutput(case.true_transform, 0.0, matches))
    rigid = score(case, "rigid part", MethodOutput(case.true_transform.linear, 0.0))
    assert truth.tre_mm < 1e-6 and truth.precision == 1.0
    assert rigid.tre_mm > 1.0  # what a perfect rigid registration leaves
    shifted = make_case(case.fixed, kind.split("-")[0], seed=1, shift=("sag",), corruption=None)
    write_pair(shifted, tmp_path / "pair")
    (read,) = folder_cases(tmp_path / "pair")
    assert isinstance(read.true_transform, DeformableTransform)
    moved = read.true_transform.apply(read.landmarks_fixed_mm)
    np.testing.assert_allclose(moved, shifted.landmarks_moving_mm, atol=0.05)


def pair3d_matches(pair):
    return pair.landmarks_fixed_mm, pair.landmarks_moving_mm


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "moving.nrrd").unlink(), "no moving image"),
        (lambda d: (d / "moving.mha").write_bytes((d / "moving.nrrd").read_bytes()), "2 candidate moving"),
        (lambda d: (d / "landmarks.csv").unlink(), "no landmarks"),
        (
            lambda d: (d / "landmarks.csv").write_text("fixed_x,fixed_y,moving_x,moving_y\n1,2,3,4\n"),
            "2D landmarks",
        ),
        (lambda d: (d / "landmarks.csv").write_text("fixed_x,fixed_y,fixed_z\n1,2,3\n"), "missing column"),
        (
            lambda d: (d / "landmarks.csv").write_text(f"{HEADER}\n0,0,0,900,0,0\n"),
            "outside the moving image",
        ),
    ],
)
def test_malformed_case_folders_are_rejected(tmp_path, pair3d, breakage, message):
    write_folder(tmp_path / "c", pair3d)
    breakage(tmp_path / "c")
    with pytest.raises(CrossregError, match=message):
        folder_cases(tmp_path)


def test_empty_or_missing_root_is_rejected(tmp_path):
    with pytest.raises(CrossregError, match="no case folders"):
        folder_cases(tmp_path)
    with pytest.raises(CrossregError, match="not a folder"):
        folder_cases(tmp_path / "nothing")


def test_crossreg_methods_come_from_the_registries(tmp_path, monkeypatch):
    names = [m.name for m in crossreg_methods()]
    assert names[:4] == ["crossreg", "crossreg-norefine", "crossreg-sparse", "crossreg-dense"]
    assert {"crosskey", "crosskey-norefine", "crosskey-learned"} <= set(names)
    # the matcher network is one method, for 2D cases only, and waits for its model file
    learned = [m for m in crossreg_methods() if "matcher2d" in m.name]
    assert [m.name for m in learned] == ["crossreg-matcher2d"] and learned[0].ndims == (2,)
    monkeypatch.setitem(FEATURES, "patch", FEATURES["mind"])
    assert {"patch", "patch-norefine", "patch-sparse", "patch-dense"} <= {m.name for m in crossreg_methods()}
    # A learned kind's missing weights file makes its methods unavailable, not MIND-SSC's.
    missing = {m.name: m.missing() for m in crossreg_methods(weights=str(tmp_path / "none.pt"))}
    assert missing["crossreg"] is None and missing["crosskey"].startswith("no file")
