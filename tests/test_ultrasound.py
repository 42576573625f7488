"""Synthetic ultrasound: field of view, probe pose, tissue contrast, shadowing, speckle statistics,
ultrasound cases and pairs on disk."""

from dataclasses import fields, replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from crossreg.errors import OutputExistsError
from crossreg.filters import erode
from crossreg.image import Grid, Image, fov_mask
from crossreg.imageio import load, to_sitk
from crossreg.markups import read_markups_json, read_matches_csv
from crossreg.resample import grid_points_mm
from crossreg.synth.beam import beam_basis, make_beam, probe_pose_on_surface
from crossreg.synth.cases import make_case
from crossreg.synth.geometry import extract_slice
from crossreg.synth.pairs import PAIR_FILES, write_pair
from crossreg.synth.ultrasound import UltrasoundConfig, echo_envelope, simulate_ultrasound

RAYLEIGH_SNR = np.sqrt(np.pi / (4.0 - np.pi))  # mean / std of a Rayleigh variable, 1.913


def axial(image):
    return extract_slice(image, "axial", 40)


def sample_sitk(image, points_mm):
    """Linear interpolation of ``image`` at world points ``(N, d)`` by SimpleITK."""
    itk = to_sitk(image)
    return np.array([itk.EvaluateAtPhysicalPoint([float(v) for v in p], sitk.sitkLinear) for p in points_mm])


def beam_frame(image, apex, direction):
    """Coordinates of every voxel centre in the probe frame: lateral ``(..., d-1)`` and along the beam."""
    local = (grid_points_mm(image.grid).double().numpy() - apex) @ beam_basis(direction)
    return local[..., :-1], local[..., -1]


@pytest.mark.parametrize(
    ("probe", "ndim"), [("curvilinear", 3), ("linear", 3), ("curvilinear", 2), ("linear", 2)]
)
def test_field_of_view_is_the_cone_and_nothing_else(t1, probe, ndim):
    image = t1 if ndim == 3 else axial(t1)
    config = UltrasoundConfig(probe=probe, depth_mm=50.0, opening_deg=60.0, width_mm=30.0)
    apex, direction = probe_pose_on_surface(image, seed=1)
    us = simulate_ultrasound(image, None, config, apex, direction, seed=0)
    lateral, along = beam_frame(image, apex, direction)
    tol = 1e-3
    if probe == "curvilinear":
        r = np.sqrt(along**2 + (lateral**2).sum(-1))
        angle = np.degrees(np.arctan2(np.sqrt((lateral**2).sum(-1)), along))
        inside = (r < 50.0 - tol) & (angle < 30.0 - 0.01)
        outside = (r > 50.0 + tol) | (angle > 30.0 + 0.01)
    else:
        half = np.abs(lateral).max(-1)
        inside = (half < 15.0 - tol) & (along > tol) & (along < 50.0 - tol)
        outside = (half > 15.0 + tol) | (along < -tol) | (along > 50.0 + tol)
    assert inside.sum() > 200 and outside.sum() > 200
    assert us.mask[inside].all()
    assert not us.mask[outside].any()
    assert np.all(us.array[outside] == 0.0)
    assert (us.array[inside] > 0).mean() > 0.5  # the field of view holds an image


@pytest.mark.parametrize("ndim", [3, 2])
def test_probe_sits_on_the_brain_surface_pointing_inwards(t1, ndim):
    image = t1 if ndim == 3 else axial(t1)
    brain = fov_mask(image)
    inner = erode(torch.from_numpy(brain), 1).numpy()

    def voxel(points_mm):
        idx = np.rint(image.grid.world_to_index(points_mm)).astype(int)[:, ::-1]
        ok = np.all((idx >= 0) & (idx < brain.shape), axis=1)
        return tuple(np.clip(idx, 0, np.array(brain.shape) - 1).T), ok

    for seed in range(4):
        apex, direction = probe_pose_on_surface(image, seed)
        assert np.linalg.norm(direction) == pytest.approx(1.0)
        at, _ = voxel(apex[None])
        assert brain[at][0] and not inner[at][0]  # on the border of the brain
        deep, ok_deep = voxel(apex[None] + 12.0 * direction)
        behind, ok_behind = voxel(apex[None] - 6.0 * direction)
        assert ok_deep[0] and brain[deep][0]
        assert not (ok_behind[0] and brain[behind][0])
    assert not np.allclose(probe_pose_on_surface(image, 0)[0], probe_pose_on_surface(image, 1)[0])


def test_ventricles_are_dark_and_boundaries_bright(t1, tissues):
    gm, wm = tissues["gm"].array, tissues["wm"].array
    head = erode(torch.from_numpy(fov_mask(tissues["gm"].with_array(gm + wm + 1e-3))), 4).numpy()
    csf = head & (gm < 0.05) & (wm < 0.05)
    boundary = (gm > 0.3) & (wm > 0.3)
    target = t1.grid.index_to_world(np.argwhere(csf)[:, ::-1].mean(axis=0)[None])[0]
    column = target + np.outer(np.arange(0.0, 120.0, 1.0), [0.0, 0.0, 1.0])
    column = column[t1.grid.contains(column)]
    idx = np.rint(t1.grid.world_to_index(column)).astype(int)
    on_brain = fov_mask(t1)[idx[:, 2], idx[:, 1], idx[:, 0]]
    apex = column[np.flatnonzero(on_brain).max()]  # the top of the brain above the ventricles
    config = UltrasoundConfig(depth_mm=80.0, opening_deg=80.0)
    us = simulate_ultrasound(t1, tissues, config, apex, np.array([0.0, 0.0, -1.0]), seed=0)
    seen = us.valid_mask() & head
    assert (seen & csf).sum() > 30 and (seen & boundary).sum() > 100
    dark, bright, brain = (us.array[seen & r].mean() for r in (csf, boundary, head))
    assert dark < 0.5 * bright
    assert dark < 0.6 * brain


def test_strong_reflector_casts_a_shadow(t1, tissues):
    apex, direction = probe_pose_on_surface(t1, seed=3)
    lateral, along = beam_frame(t1, apex, direction)
    radial = np.linalg.norm(lateral, axis=-1)
    plate = (np.abs(along - 20.0) <= 2.0) & (radial <= 12.0)
    with_plate = {**tissues, "lesion": t1.with_array(plate.astype(np.float32))}
    config = UltrasoundConfig(opening_deg=90.0, impedance_lesion=0.4)
    shadowed, control = (
        simulate_ultrasound(t1, maps, config, apex, direction, seed=5) for maps in (with_plate, tissues)
    )
    fov = control.valid_mask()
    behind = fov & (along > 28.0) & (along < 50.0) & (radial < 0.3 * along)
    aside = fov & (along > 28.0) & (along < 50.0) & (radial > 0.8 * along)
    assert behind.sum() > 50 and aside.sum() > 50
    assert shadowed.array[behind].mean() < control.array[behind].mean() - 0.1
    assert shadowed.array[aside].mean() == pytest.approx(control.array[aside].mean(), abs=0.02)
    assert shadowed.array[plate & fov].mean() > control.array[plate & fov].mean() + 0.1


def homogeneous_envelope(config, seed=0):
    """Beam-space echo amplitude ``(n_b, n_a, n_depth)`` of a uniform white-matter block, no attenuation."""
    grid = Grid((50, 50, 50), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    block = Image(np.ones(grid.shape, np.float32), grid)
    maps = {"gm": block.with_array(np.zeros(grid.shape)), "wm": block}
    config = replace(
        config, probe="linear", width_mm=30.0, depth_mm=40.0, attenuation_db_cm_mhz=0.0, noise=0.0
    )
    beam = make_beam("linear", np.array([25.0, 25.0, 2.0]), np.array([0.0, 0.0, 1.0]), 40.0, 0.0, 30.0, 0.5)
    with torch.no_grad():
        envelope = echo_envelope(block, maps, config, beam, seed).numpy()
    return envelope[4:-4, 4:-4, 4:-4]  # away from the filter's padded borders


def test_speckle_is_rayleigh_in_homogeneous_tissue():
    envelope = homogeneous_envelope(UltrasoundConfig())
    assert envelope.mean() / envelope.std() == pytest.approx(RAYLEIGH_SNR, rel=0.05)
    assert envelope.mean() == pytest.approx(UltrasoundConfig().echo_wm * np.sqrt(np.pi) / 2, rel=0.05)


def lag_correlation(envelope, axis, lag):
    a, b = np.moveaxis(envelope, axis, 0)[:-lag], np.moveaxis(envelope, axis, 0)[lag:]
    return np.corrcoef(a.ravel(), b.ravel())[0, 1]


@pytest.mark.parametrize(("axial_mm", "lateral_mm"), [(0.6, 0.2), (0.2, 0.6)])
def test_speckle_correlation_lengths_follow_the_psf(axial_mm, lateral_mm):
    # A Gaussian PSF of sigma s gives a complex field correlation exp(-l^2 / 4s^2) at lag l, so the
    # intensity (and, within a few percent, the envelope) correlates as exp(-l^2 / 2s^2).
    envelope = homogeneous_envelope(
        UltrasoundConfig(speckle_axial_mm=axial_mm, speckle_lateral_mm=lateral_mm)
    )
    for lag_samples in (1, 2):
        lag_mm = 0.5 * lag_samples  # the beam samples every 0.5 mm along and across
        for axis, sigma in ((2, axial_mm), (1, lateral_mm), (0, lateral_mm)):
            expected = np.exp(-(lag_mm**2) / (2.0 * sigma**2))
            assert lag_correlation(envelope, axis, lag_samples) == pytest.approx(expected, abs=0.05)


def test_seeds_reproduce_and_differ(t1, tissues):
    apex, direction = probe_pose_on_surface(t1, seed=0)
    a, b, c = (simulate_ultrasound(t1, tissues, None, apex, direction, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.mask, c.mask)  # same pose: same cone, different speckle
    assert np.abs(a.array - c.array)[a.mask].mean() > 0.02
    draws = [UltrasoundConfig.sample(s) for s in (4, 4, 5)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    for f in fields(UltrasoundConfig):
        if f.metadata:
            lo, hi = f.metadata["range"]
            assert all(lo <= getattr(cfg, f.name) <= hi for cfg in draws)


@pytest.mark.parametrize("ndim", [3, 2])
def test_us_case_moving_at_moving_landmarks_shows_ultrasound_at_fixed_landmarks(t1, tissues, ndim):
    image = t1 if ndim == 3 else axial(t1)
    maps = tissues if ndim == 3 else {k: axial(v) for k, v in tissues.items()}
    case = make_case(image, "us", tissues=maps, n_landmarks=60, seed=7)
    np.testing.assert_allclose(case.landmarks_moving_mm, case.true_transform.apply(case.landmarks_fixed_mm))
    assert case.moving.valid_mask().mean() > 0.15  # cut to the box around the cone
    expected = sample_sitk(case.modality, case.landmarks_fixed_mm)
    got = sample_sitk(case.moving, case.landmarks_moving_mm)
    assert np.corrcoef(expected, got)[0, 1] > 0.9
    wrong_pts = case.true_transform.inverse().apply(case.landmarks_fixed_mm)
    inside = case.moving.grid.contains(wrong_pts)
    wrong = np.zeros(len(wrong_pts))
    wrong[inside] = sample_sitk(case.moving, wrong_pts[inside])
    assert np.abs(expected - wrong).mean() > 3.0 * np.abs(expected - got).mean()


def test_write_pair_round_trips_and_refuses_to_overwrite(t1, tissues, tmp_path):
    case = make_case(t1, "us", tissues=tissues, n_landmarks=12, seed=2)
    paths = write_pair(case, tmp_path / "pair")
    assert sorted(p.name for p in paths.values()) == sorted(PAIR_FILES)
    fixed, moving = load(paths["fixed.nii.gz"]), load(paths["moving.nii.gz"])
    np.testing.assert_allclose(fixed.array, case.fixed.array)
    np.testing.assert_allclose(moving.array, case.moving.array)
    np.testing.assert_allclose(moving.origin_mm, case.moving.origin_mm)
    tx = sitk.ReadTransform(str(paths["true_transform.tfm"]))
    mapped = np.array([tx.TransformPoint(p.tolist()) for p in case.landmarks_fixed_mm])
    np.testing.assert_allclose(mapped, case.landmarks_moving_mm, atol=1e-6)
    fixed_mm, moving_mm, inlier = read_matches_csv(paths["landmarks.csv"])
    np.testing.assert_array_equal(fixed_mm, case.landmarks_fixed_mm)
    np.testing.assert_array_equal(moving_mm, case.landmarks_moving_mm)
    assert inlier.all()
    np.testing.assert_allclose(
        read_markups_json(paths["landmarks_moving.mrk.json"])[0], case.landmarks_moving_mm
    )
    with pytest.raises(OutputExistsError):
        write_pair(case, tmp_path / "pair")
    write_pair(case, tmp_path / "pair", force=True)
