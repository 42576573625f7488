"""Synthetic cases: exact ground truth (transform direction, landmarks), modality contrasts, geometry."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreg import datasets as data
from crossreg.errors import ImageReadError, InvalidConfigError, InvalidImageError
from crossreg.filters import erode
from crossreg.image import Grid, fov_mask, robust_normalize
from crossreg.imageio import to_sitk
from crossreg.matcher2d.families import FAMILIES, gradient_magnitude
from crossreg.synth.cases import make_case
from crossreg.synth.geometry import (
    covering_grid,
    extract_slice,
    fov_crop,
    random_rigid,
    resample_anisotropic,
    sample_landmarks,
)
from crossreg.synth.modality import (
    add_noise,
    bias_field,
    ct_like,
    family_like,
    random_lut,
    random_lut_curve,
    t2_like,
)
from crossreg.transform import to_sitk as transform_to_sitk


def sample_sitk(image, points_mm):
    """Linear interpolation of ``image`` at world points ``(N, d)`` by SimpleITK (not crossreg.resample)."""
    itk = to_sitk(image)
    return np.array([itk.EvaluateAtPhysicalPoint([float(v) for v in p], sitk.sitkLinear) for p in points_mm])


def tissue_regions(tissues):
    """Boolean arrays of nearly pure CSF (deep, e.g. ventricles), grey matter and white matter."""
    gm, wm = tissues["gm"].array, tissues["wm"].array
    head = erode(torch.from_numpy(fov_mask(tissues["gm"].with_array(gm + wm + 1e-3))), 4).numpy()
    return {"csf": head & (gm < 0.05) & (wm < 0.05), "gm": gm > 0.8, "wm": wm > 0.9}


@pytest.mark.parametrize(
    ("kind", "ndim"), [("t2", 3), ("ct", 3), ("random", 3), ("same", 3), ("t2", 2), ("ct", 2), ("random", 2)]
)
def test_moving_at_moving_landmarks_shows_modality_at_fixed_landmarks(t1, tissues, kind, ndim):
    image = t1 if ndim == 3 else extract_slice(t1, "axial", 40)
    maps = tissues if ndim == 3 else {k: extract_slice(v, "axial", 40) for k, v in tissues.items()}
    case = make_case(image, kind, tissues=maps, corruption=None, n_landmarks=100, seed=7)
    np.testing.assert_allclose(case.landmarks_moving_mm, case.true_transform.apply(case.landmarks_fixed_mm))
    expected = sample_sitk(case.modality, case.landmarks_fixed_mm)
    got = sample_sitk(case.moving, case.landmarks_moving_mm)
    assert np.corrcoef(expected, got)[0, 1] > 0.97
    assert np.abs(expected - got).mean() < 0.15 * expected.std()
    # The statistic tells directions apart: the inverse transform's points do not show the content.
    wrong_pts = case.true_transform.inverse().apply(case.landmarks_fixed_mm)
    inside = case.moving.grid.contains(wrong_pts)
    wrong = sample_sitk(case.moving, wrong_pts[inside])
    assert np.abs(expected[inside] - wrong).mean() > 0.5 * expected.std()


@pytest.mark.parametrize("family", ["edges", "emission"])
def test_family_case_shows_the_family_rendering_where_the_truth_puts_it(t1, family):
    image = extract_slice(t1, "axial", 40)
    case = make_case(image, "same", n_landmarks=100, seed=7, family=family)
    assert case.name == f"family-{family}-15deg-15mm-seed7"
    np.testing.assert_allclose(case.landmarks_moving_mm, case.true_transform.apply(case.landmarks_fixed_mm))
    expected = sample_sitk(case.modality, case.landmarks_fixed_mm)
    assert np.corrcoef(expected, sample_sitk(case.moving, case.landmarks_moving_mm))[0, 1] > 0.85
    wrong_pts = case.true_transform.inverse().apply(case.landmarks_fixed_mm)
    inside = case.moving.grid.contains(wrong_pts)
    assert np.corrcoef(expected[inside], sample_sitk(case.moving, wrong_pts[inside]))[0, 1] < 0.5
    head, rendered = fov_mask(image), case.modality.array
    if family == "edges":  # lines where the T1 changes, whichever polarity: not the T1's intensities
        grad = gradient_magnitude(torch.from_numpy(robust_normalize(image).array)[None, None], 1.3)[0, 0]
        assert abs(np.corrcoef(rendered[head], grad.numpy()[head])[0, 1]) > 0.9
        assert abs(np.corrcoef(rendered[head], image.array[head])[0, 1]) < 0.7
    else:  # photon counts (at most 200 at the brightest pixel) over a blurred uptake: few grey levels
        assert np.unique(rendered).size <= 201 < np.unique(image.array[head]).size


def test_family_like_is_the_matchers_family_on_2d_images_only(t1):
    image = extract_slice(t1, "coronal")
    for family in ("edges", "emission", "speckle"):
        x = torch.from_numpy(robust_normalize(image).array)[None, None]
        mask = torch.ones_like(x, dtype=torch.bool)
        out, out_mask = FAMILIES[family](x, mask, torch.Generator().manual_seed(4))
        rendered = family_like(image, family, seed=4)
        np.testing.assert_array_equal(rendered.array, (out * out_mask)[0, 0].numpy())
        assert np.array_equal(rendered.valid_mask(), out_mask[0, 0].numpy())
    assert 0.0 < rendered.valid_mask().mean() < 0.9  # speckle: a probe's field of view
    with pytest.raises(InvalidImageError, match="2D"):
        family_like(t1, "edges")
    with pytest.raises(InvalidConfigError, match="choose from"):
        family_like(image, "xray")


@pytest.mark.parametrize("kind", ["t2", "ct"])
def test_sitk_resample_with_true_transform_brings_moving_back(t1, tissues, kind):
    case = make_case(t1, kind, tissues=tissues, corruption=None, seed=3)
    reference = to_sitk(case.modality)

    def back(transform):
        itk = sitk.Resample(
            to_sitk(case.moving), reference, transform_to_sitk(transform), sitk.sitkLinear, np.nan
        )
        values = sitk.GetArrayFromImage(itk)
        overlap = np.isfinite(values) & (np.abs(case.modality.array) > 0)
        return np.corrcoef(values[overlap], case.modality.array[overlap])[0, 1]

    assert back(case.true_transform) > 0.97
    assert back(case.true_transform.inverse()) < 0.6


def test_case_partial_fov_and_anisotropic_moving(t1, tissues):
    case = make_case(t1, "t2", fov_fraction=0.5, moving_spacing_mm=(3.0, 3.0, 5.0), tissues=tissues, seed=2)
    assert case.moving.spacing_mm == (3.0, 3.0, 5.0)
    assert 0.1 < case.moving.valid_mask().mean() < 0.6
    idx = np.rint(case.moving.grid.world_to_index(case.landmarks_moving_mm)).astype(int)
    assert case.moving.valid_mask()[idx[:, 2], idx[:, 1], idx[:, 0]].all()
    expected = sample_sitk(case.modality, case.landmarks_fixed_mm)
    assert np.corrcoef(expected, sample_sitk(case.moving, case.landmarks_moving_mm))[0, 1] > 0.8
    assert case.name == "t2-15deg-15mm-fov0.5-sp3x3x5-seed2"


@settings(max_examples=50, deadline=None)
@given(
    ndim=st.sampled_from([2, 3]),
    angle=st.floats(0.0, 179.0),
    shift=st.floats(0.0, 100.0),
    seed=st.integers(0, 2**31),
)
def test_random_rigid_has_exact_angle_and_translation(ndim, angle, shift, seed):
    center = np.random.default_rng(seed).uniform(-50, 50, ndim)
    t = random_rigid(ndim, angle, shift, center, seed)
    np.testing.assert_allclose(t.matrix.T @ t.matrix, np.eye(ndim), atol=1e-12)
    assert np.linalg.det(t.matrix) == pytest.approx(1.0)
    assert t.rotation_deg() == pytest.approx(angle, abs=1e-5)
    assert np.linalg.norm(t.apply(center[None])[0] - center) == pytest.approx(shift, abs=1e-9)


def test_random_rigid_is_seeded():
    a, b, c = (random_rigid(3, 15, 15, np.zeros(3), s) for s in (4, 4, 5))
    np.testing.assert_array_equal(a.homogeneous(), b.homogeneous())
    assert not np.allclose(a.homogeneous(), c.homogeneous())


def test_t2_like_has_csf_bright_grey_mid_white_dark(t1, tissues):
    regions = tissue_regions(tissues)
    assert regions["csf"].sum() > 50
    assert t1.array[regions["wm"]].mean() > t1.array[regions["csf"]].mean()  # regions are what they say
    for maps in (tissues, None):  # probability maps, or the look-up table on T1 intensity
        t2 = t2_like(t1, maps, seed=1).array
        csf, gm, wm = (t2[regions[k]].mean() for k in ("csf", "gm", "wm"))
        assert csf > gm > wm
        assert csf > 1.5 * wm


def test_ct_like_has_flat_brain_bright_skull_dark_air(t1, tissues):
    ct = ct_like(t1, tissues, seed=0)
    assert ct.grid.shape == tuple(s + 16 for s in t1.grid.shape)  # 16 mm padding at 2 mm per side
    regions = {k: np.pad(r, 8) for k, r in tissue_regions(tissues).items()}
    gm, wm = ct.array[regions["gm"]], ct.array[regions["wm"]]
    assert 30 < gm.mean() < 50 and 18 < wm.mean() < 34 and gm.mean() > wm.mean()
    assert np.percentile(ct.array, 99.5) > 1000  # skull
    assert ct.array[0, 0, 0] == pytest.approx(-1000, abs=1)  # air
    assert ct_like(t1, None, seed=0).array[regions["wm"]].std() < 10  # soft tissue nearly flat


def test_random_lut_is_non_monotonic_and_seeded(t1):
    _, y = random_lut_curve(seed=3)
    steps = np.diff(y)
    assert (steps > 1e-6).any() and (steps < -1e-6).any()
    a, b, c = (random_lut(t1, s).array for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.05
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_bias_field_and_noise_have_requested_strength(t1):
    brain = t1.array > 50
    gain = bias_field(t1, 0.3, seed=1).array[brain] / t1.array[brain]
    assert np.abs(np.log(gain)).max() == pytest.approx(0.3, abs=0.02)
    noisy = add_noise(t1, 0.05, seed=1, rician=False).array
    assert (noisy - t1.array).std() == pytest.approx(0.05 * np.percentile(t1.array, 99), rel=0.03)


@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_fov_crop_keeps_requested_fraction_of_signal(t1, fraction):
    signal = fov_mask(t1)
    cropped = fov_crop(t1, fraction, seed=5)
    kept = (signal & cropped.valid_mask()).sum() / signal.sum()
    assert kept == pytest.approx(fraction, abs=0.02)
    assert np.all(cropped.array[~cropped.valid_mask()] == 0)
    axial = fov_crop(t1, fraction, seed=5, normal=np.array([0.0, 0.0, 1.0])).valid_mask()
    assert np.all(axial == axial[:, :1, :1])  # a slab across world z keeps whole axial slices


def test_resample_anisotropic_keeps_physical_extent(t1):
    out = resample_anisotropic(t1, (3.0, 3.0, 5.0))
    assert out.spacing_mm == (3.0, 3.0, 5.0)
    np.testing.assert_allclose(out.grid.center_mm(), t1.grid.center_mm(), atol=1e-9)
    extent_in = (t1.grid.size_xyz - 1) * np.asarray(t1.spacing_mm)
    extent_out = (out.grid.size_xyz - 1) * np.asarray(out.spacing_mm)
    assert np.all(extent_out >= extent_in - 1e-9) and np.all(extent_out < extent_in + out.spacing_mm)
    mass = [im.array.sum() * np.prod(im.spacing_mm) for im in (t1, out)]  # intensity x volume
    assert mass[1] == pytest.approx(mass[0], rel=0.02)
    oblique = resample_anisotropic(t1, (2.0, 2.0, 4.0), random_rigid(3, 20, 0, seed=1).matrix @ t1.direction)
    assert oblique.grid.contains(t1.grid.corners_mm(), margin_vox=1e-6).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), ndim=st.sampled_from([2, 3]))
def test_covering_grid_of_a_grids_corners_is_that_grid(seed, ndim):
    rng = np.random.default_rng(seed)
    direction = random_rigid(ndim, rng.uniform(0, 180), 0, seed=seed).matrix
    shape = tuple(int(n) for n in rng.integers(1, 40, ndim))
    grid = Grid(shape, tuple(rng.uniform(0.3, 3.0, ndim)), tuple(rng.uniform(-50, 50, ndim)), direction)
    again = covering_grid(grid.corners_mm(), grid.spacing_mm, direction)
    assert again.shape == grid.shape
    np.testing.assert_allclose(again.origin_mm, grid.origin_mm, atol=1e-9)


def test_slices_keep_in_plane_geometry(t1):
    for axis, world, cut in (("axial", [0, 1], 2), ("coronal", [0, 2], 1), ("sagittal", [1, 2], 0)):
        s = extract_slice(t1, axis, 30)
        assert s.ndim == 2 and s.spacing_mm == (2.0, 2.0)
        ij = np.array([[0, 0], [5, 7], [20, 11]])
        ijk = np.insert(ij, cut, 30, axis=1)
        pts3 = t1.grid.index_to_world(ijk)
        np.testing.assert_allclose(s.grid.index_to_world(ij), pts3[:, world])
        np.testing.assert_allclose(pts3[:, cut], pts3[0, cut])
        np.testing.assert_array_equal(s.array, np.take(t1.array, 30, axis=2 - cut))
    axial = data.mni152_slice(1)
    assert axial.grid.shape == (189, 153) and axial.spacing_mm == (1.0, 1.0)
    np.testing.assert_allclose(axial.origin_mm, (76.0, 111.0))
    np.testing.assert_allclose(axial.direction, np.diag([-1.0, -1.0]))


def test_landmarks_lie_inside_mask_off_voxel_centres(t1):
    mask = fov_mask(t1)
    pts = sample_landmarks(t1, 50, seed=0, mask=mask)
    idx = t1.grid.world_to_index(pts)
    assert len(np.unique(pts, axis=0)) == 50 and np.abs(idx - np.rint(idx)).max() > 0.1
    r = np.rint(idx).astype(int)
    assert mask[r[:, 2], r[:, 1], r[:, 0]].all()
    np.testing.assert_array_equal(pts, sample_landmarks(t1, 50, seed=0, mask=mask))


def test_shipped_data(t1, tissues):
    assert t1.ndim == 3 and t1.spacing_mm == (2.0, 2.0, 2.0)
    for m in tissues.values():
        assert m.grid.shape == t1.grid.shape and m.array.min() >= 0.0 and m.array.max() <= 1.0
    with pytest.raises(ImageReadError, match="available"):
        data.mni152_tissues(1)


def test_random_affine_is_rigid_times_bounded_strain():
    from crossreg.synth.geometry import random_affine

    t = random_affine(
        3, 10.0, 5.0, max_scale=0.1, max_shear=0.05, center_mm=np.array([1.0, 2.0, 3.0]), seed=4
    )
    singular = np.linalg.svd(t.matrix, compute_uv=False)
    assert t.model == "affine" and np.all(singular < 1.2) and np.all(singular > 0.83)
    assert not np.allclose(singular, 1.0, atol=1e-3)  # really not rigid
    assert (
        random_affine(3, 10.0, 5.0, seed=4).matrix.tolist()
        == random_affine(3, 10.0, 5.0, seed=4).matrix.tolist()
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_elastic_warp_moves_content_where_apply_says(ndim):
    from crossreg.synth.elastic import random_elastic

    t1 = data.mni152_t1(2)
    image = t1 if ndim == 3 else extract_slice(t1, "axial", 45)
    warp = random_elastic(image, max_displacement_mm=6.0, control_spacing_mm=20.0, seed=1)
    warped = warp.warp(image)
    points = sample_landmarks(image, 200, seed=2, mask=fov_mask(image))
    shift = np.linalg.norm(warp.apply(points) - points, axis=1)
    assert shift.mean() > 1.0 and shift.max() <= 6.0 + 1e-6
    # What the warped image shows at p is what the original shows at apply(p), not at p.
    here = sample_sitk(warped, points)
    there, unmoved = sample_sitk(image, warp.apply(points)), sample_sitk(image, points)
    assert np.abs(here - there).mean() < 0.2 * np.abs(here - unmoved).mean()


def test_synth_subject_writes_a_bench_case_of_another_head(tmp_path):
    from typer.testing import CliRunner

    from crossreg.cli import app
    from crossreg.evaluate.cases import folder_cases

    out = tmp_path / "subject"
    result = CliRunner().invoke(
        app, ["synth", "subject", "--out", str(out), "--seed", "3", "--landmarks", "30"]
    )
    assert result.exit_code == 0, result.output
    assert not (out / "true_transform.tfm").exists()  # nonlinear: the landmarks carry the truth
    (case,) = folder_cases(out)
    assert case.true_transform is None and len(case.landmarks_fixed_mm) >= 25
    moved = np.linalg.norm(case.landmarks_moving_mm - case.landmarks_fixed_mm, axis=1)
    assert np.median(moved) > 2.0  # another head shape, not the template
    # Salient points spread over the brain, at least the detector's 10 mm apart.
    gaps = np.linalg.norm(case.landmarks_fixed_mm[:, None] - case.landmarks_fixed_mm[None], axis=2)
    assert gaps[np.triu_indices(len(gaps), 1)].min() >= 9.9
    again = CliRunner().invoke(app, ["synth", "subject", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
