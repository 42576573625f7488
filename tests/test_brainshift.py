"""Synthetic brain shift: magnitudes, locality, no folding, exact nonlinear truth, cavities, files."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from crossreg import datasets
from crossreg.cli import app
from crossreg.deformation import DeformableTransform
from crossreg.errors import InvalidConfigError
from crossreg.imageio import save, to_sitk
from crossreg.resample import grid_points_mm
from crossreg.synth.brainshift import ShiftConfig, random_shift
from crossreg.synth.cases import make_case
from crossreg.synth.geometry import extract_slice, resample_anisotropic

RANGES = {"sag": "sag_mm", "swell": "swell_mm", "resect": "collapse_mm", "soft": "soft_mm"}


@pytest.fixture(scope="module")
def axial():
    """An axial MNI152 slice at 2 mm (2D) with its tissue maps."""
    t1, tissues = datasets.mni152_t1(2), datasets.mni152_tissues(2)
    return extract_slice(t1, "axial", 50), {k: extract_slice(v, "axial", 50) for k, v in tissues.items()}


def sample_sitk(image, points_mm):
    """Linear interpolation of ``image`` at world points ``(N, d)`` by SimpleITK."""
    itk = to_sitk(image)
    return np.array([itk.EvaluateAtPhysicalPoint([float(v) for v in p], sitk.sitkLinear) for p in points_mm])


@pytest.mark.parametrize("kind", ["sag", "swell", "resect", "soft"])
def test_largest_displacement_is_the_drawn_magnitude_within_its_range(axial, kind):
    config = ShiftConfig()
    for seed in range(2):
        shift = random_shift(axial[0], (kind,), config, seed)
        drawn = shift.magnitudes_mm[kind]
        lo, hi = getattr(config, RANGES[kind])
        assert lo <= drawn <= hi
        largest = float(shift.forward_mm.norm(dim=0).max())
        assert largest == pytest.approx(drawn, rel=0.02)


def test_sag_is_localised_and_sinks_along_gravity(axial):
    config = ShiftConfig(sag_mm=(10.0, 10.0), sag_radius_mm=(60.0, 60.0), gravity_tilt_deg=0.0)
    shift = random_shift(axial[0], ("sag",), config, seed=4)
    site = shift.craniotomy_mm
    points = grid_points_mm(shift.grid).double().reshape(-1, 2).numpy()
    u = shift.forward_mm.reshape(2, -1).T.numpy()
    far = np.linalg.norm(points - site, axis=1) > 60.0 + 10.0
    assert far.any() and np.abs(u[far]).max() < 1e-9  # nothing moves beyond the sag's reach
    at_site = shift.displacement(site[None])[0]
    assert np.linalg.norm(at_site) > 9.0  # the surface under the craniotomy sinks most
    assert at_site @ shift.inward > 0.99 * np.linalg.norm(at_site)  # along gravity, into the brain
    deeper = [np.linalg.norm(shift.displacement((site + d * shift.inward)[None])) for d in (0, 20, 40, 60)]
    assert np.all(np.diff(deeper) < 0)  # fading with depth


def test_swelling_pushes_outward(axial):
    shift = random_shift(axial[0], ("swell",), ShiftConfig(swell_depth_mm=(20.0, 20.0)), seed=1)
    center = shift.craniotomy_mm + 20.0 * shift.inward
    offsets = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -10.0]])
    radial = np.sum(shift.displacement(center + offsets) * offsets, axis=1)
    assert np.all(radial > 0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_largest_combined_shift_does_not_fold_and_inverts(axial, ndim):
    config = ShiftConfig(
        sag_mm=(15.0, 15.0),
        swell_mm=(8.0, 8.0),
        collapse_mm=(4.0, 4.0),
        cavity_radius_mm=(5.0, 5.0),
        spacing_mm=4.0,
    )
    image = axial[0] if ndim == 2 else resample_anisotropic(datasets.mni152_t1(2), (4.0, 4.0, 4.0))
    shift = random_shift(image, ("sag", "swell", "resect"), config, seed=2)
    det = shift.jacobian_determinant()
    assert float(det.min()) > 0.0
    assert float(det.max()) > 1.2 and float(det.min()) < 0.8  # it does expand and compress
    assert float(shift.forward_mm.norm(dim=0).max()) <= config.max_total_mm * 1.005
    nodes = grid_points_mm(shift.grid).double()
    there = nodes + shift.forward_mm.movedim(0, -1)
    back = shift.source_points(there) - nodes
    outside = ~torch.from_numpy(shift.in_cavity(there.reshape(-1, ndim).numpy(), 4.0)).reshape(
        back.shape[:-1]
    )
    assert float(back.norm(dim=-1)[outside].max()) < 0.25 * config.spacing_mm  # linear interpolation


def test_same_seed_same_shift_other_seed_other_shift(axial):
    config = ShiftConfig(spacing_mm=4.0)
    a, b = (random_shift(axial[0], ("sag", "resect"), config, seed=5) for _ in range(2))
    c = random_shift(axial[0], ("sag", "resect"), config, seed=6)
    assert torch.equal(a.forward_mm, b.forward_mm) and np.array_equal(a.cavity_center_mm, b.cavity_center_mm)
    assert a.forward_mm.shape != c.forward_mm.shape or not torch.allclose(a.forward_mm, c.forward_mm)


def test_unknown_kind_is_refused(axial):
    with pytest.raises(InvalidConfigError, match="sag, swell, resect, soft"):
        random_shift(axial[0], ("shear",))
    with pytest.raises(InvalidConfigError, match="sag_mm"):
        ShiftConfig(sag_mm=(5.0, 2.0))


def test_truth_is_rigid_after_shift_and_moving_shows_the_tissue(axial):
    image, tissues = axial
    config = ShiftConfig(sag_mm=(12.0, 15.0))
    case = make_case(
        image,
        "same",
        tissues=tissues,
        corruption=None,
        n_landmarks=40,
        seed=3,
        shift=("sag",),
        shift_config=config,
    )
    truth = case.true_transform
    assert isinstance(truth, DeformableTransform)
    pf, pm = case.landmarks_fixed_mm, case.landmarks_moving_mm
    np.testing.assert_allclose(truth.apply(pf), pm)
    # Push, not pull: fixed landmarks go where the shift carries their tissue, then move rigidly.
    np.testing.assert_allclose(truth.apply(pf), truth.linear.apply(case.shift.apply(pf)), atol=0.05)
    residual = np.linalg.norm(truth.linear.apply(pf) - pm, axis=1)
    assert residual.min() >= config.landmark_min_mm - 1e-6 and residual.mean() > 3.0  # where it moved
    expected = sample_sitk(case.fixed, pf)
    got = sample_sitk(case.moving, pm)
    assert np.corrcoef(expected, got)[0, 1] > 0.97
    # The rigid part alone, or the shift's inverse, puts the landmarks on other tissue.
    for wrong in (truth.linear.apply(pf), truth.linear.apply(2 * pf - case.shift.apply(pf))):
        assert np.abs(sample_sitk(case.moving, wrong) - expected).mean() > 2.0 * np.abs(got - expected).mean()


def test_resection_cavity_is_fluid_and_holds_no_landmark(axial):
    image, tissues = axial
    config = ShiftConfig(cavity_radius_mm=(9.0, 10.0), cavity_offset_mm=(0.0, 0.0))
    case = make_case(
        image,
        "t2",
        tissues=tissues,
        corruption=None,
        n_landmarks=30,
        seed=1,
        shift=("sag", "resect"),
        shift_config=config,
    )
    shift = case.shift
    radius = shift.cavity_radius_mm
    assert 9.0 * 0.999 <= radius <= 10.0
    moved = shift.apply(case.landmarks_fixed_mm)
    assert np.linalg.norm(moved - shift.cavity_center_mm, axis=1).min() > radius + shift.rim_mm
    # In the T2-like image (before the rigid motion) the whole cavity is CSF-bright; without it, it was not.
    r, a = np.meshgrid(np.linspace(0.0, radius - 2.0, 5), np.linspace(0.0, 2 * np.pi, 12, endpoint=False))
    inside = shift.cavity_center_mm + np.stack([r * np.cos(a), r * np.sin(a)], axis=-1).reshape(-1, 2)
    assert np.mean(sample_sitk(case.modality, inside) > 0.8) == 1.0
    intact = make_case(image, "t2", tissues=tissues, corruption=None, n_landmarks=30, seed=1)
    assert np.mean(sample_sitk(intact.modality, inside) > 0.8) < 0.5


def test_synth_pair_shift_writes_h5_that_simpleitk_reads(axial, tmp_path):
    path = tmp_path / "slice.nii.gz"
    save(axial[0], path)
    out = tmp_path / "pair"
    args = [
        "synth",
        "pair",
        str(path),
        "--kind",
        "t2",
        "--shift",
        "sag,resect",
        "--out",
        str(out),
        "--seed",
        "2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "true_transform.h5").is_file() and not (out / "true_transform.tfm").exists()
    rows = np.loadtxt(out / "landmarks.csv", delimiter=",", skiprows=1, usecols=(1, 2, 3, 4))
    tx = sitk.ReadTransform(str(out / "true_transform.h5"))
    mapped = np.array([tx.TransformPoint([float(v) for v in p]) for p in rows[:, :2]])
    np.testing.assert_allclose(mapped, rows[:, 2:], atol=0.05)
    rigid_only = np.linalg.norm(
        DeformableTransform.read(out / "true_transform.h5").linear.apply(rows[:, :2]) - rows[:, 2:], axis=1
    )
    assert rigid_only.mean() > 1.0  # the file carries the nonlinear part, not only the rigid motion
    refused = CliRunner().invoke(app, [*args[:5], "--shift", "twist", "--out", str(tmp_path / "p2")])
    assert refused.exit_code == 2 and "twist" in refused.output
