"""The deformable stage: a known smooth deformation recovered without folding, a partial field of view
kept quiet outside, settings validated, and the CLI's files (.h5 + field) written as promised."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from crossreg.cli import app
from crossreg.deformable import DeformableConfig, deform
from crossreg.deformable.convex import candidates, coupled_convex
from crossreg.deformable.features import agreement, equalised, pair_features
from crossreg.deformation import DeformableTransform
from crossreg.errors import InvalidConfigError
from crossreg.filters import gaussian_blur
from crossreg.image import Grid, Image, crop_to_mask, fov_mask, robust_normalize
from crossreg.imageio import save
from crossreg.resample import grid_points_mm
from crossreg.synth.cases import synthesize
from crossreg.synth.elastic import ElasticWarp
from crossreg.transform import AffineTransform

AMPLITUDE_MM = 7.0
SIGMA_MM = 14.0


def _bump_case(image: Image, tissues, seed: int = 1):
    """A T2-like copy of ``image`` pulled through a Gaussian bump ``v``: the moving point ``q`` shows
    what the fixed point ``q + v(q)`` shows. Returns moving, warp, bump centre."""
    points = grid_points_mm(image.grid, dtype=torch.float64).numpy()
    centre = image.grid.center_mm() + np.array([15.0, -10.0, 10.0])[: image.ndim]
    direction = np.array([0.6, 0.5, -0.62])[: image.ndim]
    direction = direction / np.linalg.norm(direction)
    r2 = ((points - centre) ** 2).sum(-1)
    v = np.exp(-r2 / (2 * SIGMA_MM**2))[..., None] * direction * AMPLITUDE_MM
    warp = ElasticWarp(image.grid, np.moveaxis(v, -1, 0).copy())
    return warp.warp(synthesize(image, "t2", tissues, seed)), warp, centre


def _box(image: Image, centre_mm: np.ndarray, half_mm: float) -> Image:
    """``image`` cut to a box of +-``half_mm`` around ``centre_mm``: a small, fast fixed image."""
    points = grid_points_mm(image.grid, dtype=torch.float64).numpy()
    inside = np.all(np.abs(points - centre_mm) <= half_mm, axis=-1)
    return crop_to_mask(image.with_array(image.array, inside))


def _landmarks(warp: ElasticWarp, brain: np.ndarray, region: np.ndarray, n: int = 40):
    """Fixed and moving landmarks ``(n, d)`` where the bump moves points by over a third of its height."""
    points = grid_points_mm(warp.grid, dtype=torch.float64).numpy()
    strong = (np.linalg.norm(warp.displacement_mm, axis=0) > AMPLITUDE_MM / 3) & brain & region
    q = points[strong][np.random.default_rng(0).choice(int(strong.sum()), n, replace=False)]
    return warp.apply(q), q


@pytest.fixture(scope="module")
def bump(t1, tissues):
    moving, warp, centre = _bump_case(t1, tissues)
    fixed = _box(t1, centre, 36.0)
    points = grid_points_mm(t1.grid, dtype=torch.float64).numpy().reshape(-1, 3)
    inside = fixed.grid.contains(points).reshape(t1.array.shape)
    return fixed, moving, warp, _landmarks(warp, t1.array > 30, inside)


def test_recovers_a_smooth_bump_without_folding(bump):
    fixed, moving, _, (pf, pm) = bump
    before = np.linalg.norm(pf - pm, axis=1)
    found = deform(fixed, moving, AffineTransform.identity(3))
    after = np.linalg.norm(found.transform.apply(pf) - pm, axis=1)
    assert after.mean() < 0.5 * before.mean(), (before.mean(), after.mean())  # measured 4.2 -> ~1.3 mm
    assert found.negative_jacobian_fov == 0.0
    assert 3.0 < found.max_displacement_mm < 12.0


def test_partial_fov_keeps_the_field_small_outside(bump):
    """A cone-like moving field of view (a ball around the bump): the field follows the bump inside
    and fades outside, instead of following zero padding."""
    fixed, moving, _, (pf, pm) = bump
    points = grid_points_mm(moving.grid, dtype=torch.float64).numpy()
    ball = np.linalg.norm(points - fixed.grid.center_mm(), axis=-1) < 22.0
    partial = moving.with_array(moving.array * ball, ball)
    found = deform(fixed, partial, AffineTransform.identity(3))
    u = found.transform.field.array
    points = grid_points_mm(found.transform.field.grid, dtype=torch.float64).numpy()
    far = np.linalg.norm(points - fixed.grid.center_mm(), axis=-1) > 40
    assert np.linalg.norm(u[far], axis=-1).max() < 1.5
    covered = np.linalg.norm(pf - fixed.grid.center_mm(), axis=1) < 18.0
    before = np.linalg.norm(pf - pm, axis=1)[covered]
    after = np.linalg.norm(found.transform.apply(pf) - pm, axis=1)[covered]
    assert after.mean() < 0.7 * before.mean(), (before.mean(), after.mean())
    assert found.negative_jacobian == 0.0


@pytest.mark.parametrize(
    "settings",
    [
        {"capture_mm": 0.0},
        {"weight": -1.0},
        {"grid_spacing_mm": 1.0},
        {"step_mm": 20.0},
        {"iterations": -1},
        {"point_weight": -0.5},
        {"point_capture_mm": 0.0},
        {"min_agreement": 1.5},
        {"equalise": 1.5},
    ],
)
def test_settings_are_validated(settings):
    with pytest.raises(InvalidConfigError):
        DeformableConfig(**settings)


def test_convex_search_leaves_nodes_without_cost_at_rest():
    """Nodes with no cost (outside a field of view) stay at zero displacement instead of the search
    cube's first corner, and do not drag the one informed node far from what it asks for."""
    offsets = candidates(3, 1, 3, torch.device("cpu"))
    cost = torch.zeros(len(offsets), 7, 7, 7)
    cost[:, 3, 3, 3] = ((offsets - torch.tensor([2.0, 0.0, 0.0])) ** 2).sum(1)
    field = coupled_convex(cost, offsets, 1.0)
    assert field[:, 0, 0, 0].abs().max() == 0.0
    assert field[:, 3, 3, 3].abs().max() < 0.5  # smoothed with its resting neighbours, never pulled away


def test_agreement_separates_related_features_from_unrelated_ones(t1, tissues):
    """The same anatomy in T1 and T2 agrees (> 0.5); T1 against smoothed noise of the same grid, an
    ultrasound-like image unrelated to it, does not (< 0.2)."""
    fixed = _box(t1, t1.grid.center_mm(), 24.0)
    identity = AffineTransform.identity(3)
    related = pair_features(fixed, synthesize(t1, "t2", tissues, 1), identity, 2.0, 1.0, 0.5)
    noise = torch.from_numpy(np.random.default_rng(0).normal(size=t1.array.shape).astype(np.float32))
    unrelated = t1.with_array(gaussian_blur(noise[None], 1.5)[0].numpy())
    assert agreement(related) > 0.5
    assert agreement(pair_features(fixed, unrelated, identity, 2.0, 1.0, 0.5)) < 0.2


def test_equalised_spreads_a_narrow_tissue_range():
    """CT-like values: air (ties), two soft tissues 14 HU apart, bone. Ranks give the soft tissues a
    step of a quarter of the range (robust normalisation: 0.6%); ties take their lowest rank."""
    values = np.repeat([-1000.0, 26.0, 40.0, 1500.0], [400, 300, 200, 100]).astype(np.float32)
    image = Image(values.reshape(10, 10, 10), Grid((10, 10, 10), (1.0,) * 3, (0.0,) * 3, np.eye(3)))
    assert np.array_equal(equalised(image, 0.0).array, robust_normalize(image).array)
    ranked = np.unique(equalised(image, 1.0).array)
    assert np.allclose(ranked, [0.0, 0.4, 0.7, 0.9], atol=0.01), ranked
    half = np.unique(equalised(image, 0.5).array)
    assert half[2] - half[1] > 0.1  # soft-tissue step at share 0.5


def test_equalising_gives_ct_soft_tissue_structure(t1, tissues):
    """A whole-head CT-like image: its bone's contrast flattens the brain's MIND-SSC descriptors
    (MIND's variance floor is relative to the image mean); half-equalised, they spread and agree
    with the T1's (measured: spread 0.21 -> 0.32, agreement 0.68 -> 0.82)."""
    ct = synthesize(t1, "ct", tissues, 1)
    brain = torch.from_numpy(fov_mask(t1))
    found = {}
    for share in (0.0, 0.5):
        pair = pair_features(t1, ct, AffineTransform.identity(3), 2.0, 1.0, share)
        moving = pair.moving[:, brain]
        found[share] = (float((moving - moving.mean(0)).std(0).mean()), agreement(pair))
    assert found[0.5][0] > 1.3 * found[0.0][0], found
    assert found[0.5][1] > found[0.0][1] + 0.08, found


# ---------------------------------------------------------------- the command line

runner = CliRunner()


@pytest.fixture(scope="module")
def slice_pair(tmp_path_factory):
    """A 2D T2-like slice under a bump, as files: the CLI end to end in a few seconds."""
    from crossreg import datasets

    fixed = datasets.mni152_slice(2, "axial", 44)
    moving, _, _ = _bump_case(fixed, None)
    folder = tmp_path_factory.mktemp("pair")
    save(fixed, folder / "fixed.nii.gz")
    save(moving, folder / "moving.nii.gz")
    return str(folder / "fixed.nii.gz"), str(folder / "moving.nii.gz")


def test_cli_refuses_a_linear_file_for_a_deformable_transform(slice_pair, tmp_path):
    done = runner.invoke(app, ["register", *slice_pair, "--deformable", "--out", str(tmp_path / "T.tfm")])
    assert done.exit_code == 2
    lines = [ln for ln in done.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and ".h5" in done.output, done.output
    assert not list(tmp_path.iterdir())


def test_cli_writes_h5_and_field_and_never_overwrites(slice_pair, tmp_path):
    out = tmp_path / "T.h5"
    args = [
        "register",
        *slice_pair,
        "--deformable",
        "--out",
        str(out),
        "--resampled",
        str(tmp_path / "R.nii.gz"),
    ]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    field_path = tmp_path / "T_field.nii.gz"
    assert out.is_file() and field_path.is_file() and (tmp_path / "R.nii.gz").is_file()
    ours = DeformableTransform.read(out)
    tx = sitk.ReadTransform(str(out))
    total = sitk.DisplacementFieldTransform(sitk.ReadImage(str(field_path), sitk.sitkVectorFloat64))
    grid = ours.field.grid
    p = grid.index_to_world(np.random.default_rng(1).uniform(2, grid.size_xyz - 3, size=(50, 2)))
    assert np.abs(np.array([tx.TransformPoint(q.tolist()) for q in p]) - ours.apply(p)).max() < 0.01
    assert np.abs(np.array([total.TransformPoint(q.tolist()) for q in p]) - ours.apply(p)).max() < 0.01
    assert np.abs(ours.field.array).max() > 1.0  # a field, not an identity one
    stamp = out.stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert out.stat().st_mtime_ns == stamp


def test_register_hands_all_its_matches_to_the_stage(monkeypatch, slice_pair):
    """The pipeline's deformable stage gets every match of the linear stage (not only the inliers), for
    the point term; the matches that pulled the field are reported."""
    import importlib

    from crossreg.config import RegisterConfig
    from crossreg.imageio import load

    pipeline = importlib.import_module("crossreg.register")  # the module, not crossreg.register()
    handed = []

    def spy(*args):
        handed.append(args[-1])
        return deform(*args)

    monkeypatch.setattr(pipeline, "deform", spy)
    fixed, moving = (load(path) for path in slice_pair)
    result = pipeline.register(fixed, moving, RegisterConfig(deformable=DeformableConfig(iterations=5)))
    np.testing.assert_array_equal(handed[0][0], result.fixed_points_mm)
    np.testing.assert_array_equal(handed[0][1], result.moving_points_mm)
    assert result.n_matches > result.n_inliers and 0 < result.deformable.n_points <= result.n_matches
