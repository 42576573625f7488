"""Intensity refinement on real MNI152 data: a T1 fixed image against a T2-like, partial-FOV,
anisotropic moving image built under a known rigid transform; refinement must reach sub-mm TRE."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import crossreg
from crossreg.errors import NoOverlapError
from crossreg.image import Grid, Image, axis_aligned_grid, from_array
from crossreg.imageio import load
from crossreg.refine import RefineConfig, refine
from crossreg.resample import resample
from crossreg.transform import AffineTransform, compose, rigid_from_params

DATA = Path(crossreg.__file__).parent / "data"


@dataclass(frozen=True, eq=False)
class Case:
    """A cross-modal pair with its ground truth: ``true`` maps fixed to moving points."""

    fixed: Image
    moving: Image
    true: AffineTransform
    initial: AffineTransform
    points_mm: np.ndarray  # (20, d) brain points of the fixed image


def t2_like(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, seed: int = 0) -> np.ndarray:
    """T2-like contrast from tissue maps (0-255): CSF bright, grey matter mid, white matter dark."""
    g, w = gm / 255.0, wm / 255.0
    csf = np.clip(1.0 - g - w, 0.0, 1.0)
    noise = 0.03 * np.random.default_rng(seed).standard_normal(t1.shape)
    return ((t1 > 0) * (csf + 0.5 * g + 0.2 * w + noise)).clip(0.0).astype(np.float32)


def covering_grid(points_mm: np.ndarray, spacing_mm: tuple[float, ...]) -> Grid:
    """An axis-aligned grid with (anisotropic) ``spacing_mm`` covering points ``(N, d)``."""
    lo, hi = points_mm.min(axis=0), points_mm.max(axis=0)
    size_xyz = np.ceil((hi - lo) / np.asarray(spacing_mm)).astype(int) + 1
    return Grid(tuple(int(s) for s in size_xyz[::-1]), spacing_mm, tuple(lo), np.eye(len(spacing_mm)))


def make_case(
    fixed: Image,
    gm: np.ndarray,
    wm: np.ndarray,
    true: AffineTransform,
    perturbation: AffineTransform,
    spacing_mm: tuple[float, ...],
) -> Case:
    """Moving = T2-like ``fixed`` seen through ``true`` on an anisotropic grid, only the first half of
    its x axis kept (the rest zero and masked out); the start is ``true`` after ``perturbation``."""
    modality = fixed.with_array(t2_like(fixed.array, gm, wm))
    moving = resample(
        modality, covering_grid(true.apply(fixed.grid.corners_mm()), spacing_mm), true.inverse()
    )
    array, mask = moving.array.copy(), moving.valid_mask().copy()
    half = array.shape[-1] // 2
    array[..., half:], mask[..., half:] = 0.0, False
    brain = np.argwhere(gm + wm > 128)[:, ::-1].astype(float)
    pick = np.random.default_rng(0).choice(len(brain), 20, replace=False)
    points = fixed.grid.index_to_world(brain[pick])
    return Case(fixed, moving.with_array(array, mask), true, compose(perturbation, true), points)


def tre_mm(estimate: AffineTransform, case: Case) -> float:
    """Mean distance (mm) between estimated and true images of the case's brain points."""
    return float(
        np.linalg.norm(estimate.apply(case.points_mm) - case.true.apply(case.points_mm), axis=1).mean()
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Run single-threaded: on shared CI cores torch's intra-op threads stall on small tensors
    (2D runs take ~40x longer with 2 threads on a loaded 2-core box), which would make timing flaky."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def volumes() -> tuple[Image, np.ndarray, np.ndarray]:
    t1 = load(DATA / "mni152_t1_2mm.nii.gz")
    gm, wm = load(DATA / "mni152_gm_2mm.nii.gz").array, load(DATA / "mni152_wm_2mm.nii.gz").array
    return t1, gm, wm


@pytest.fixture(scope="module")
def case3d(volumes) -> Case:
    t1, gm, wm = volumes
    center = t1.grid.center_mm()
    true = rigid_from_params([10.0, -6.0, 4.0], [12.0, -5.0, 6.0], center)
    perturbation = rigid_from_params([1.8, -1.8, 1.5], [1.8, -1.5, 1.9], center)  # 3 deg, 3 mm
    return make_case(t1, gm, wm, true, perturbation, (1.5, 1.5, 3.0))


@pytest.fixture(scope="module")
def case2d(volumes) -> Case:
    t1, gm, wm = volumes
    z = t1.array.shape[0] // 2
    fixed = from_array(t1.array[z], t1.spacing_mm[:2], t1.origin_mm[:2], t1.direction[:2, :2])
    center = fixed.grid.center_mm()
    true = rigid_from_params([10.0], [12.0, -5.0], center)
    perturbation = rigid_from_params([3.0], [2.2, -2.0], center)
    return make_case(fixed, gm[z], wm[z], true, perturbation, (1.5, 3.0))


def test_mind_3d_partial_fov_reaches_sub_mm(case3d: Case) -> None:
    result = refine(case3d.fixed, case3d.moving, case3d.initial)
    before, after = tre_mm(case3d.initial, case3d), tre_mm(result.transform, case3d)
    assert before > 2.5
    assert after < 0.3, f"TRE {before:.2f} -> {after:.3f} mm"
    assert result.loss_final < result.loss_initial
    # The moving image is a slab inside the fixed one: the overlap is (nearly) all of the smaller FOV.
    assert 0.8 < result.overlap_fraction < 1.05
    assert result.transform.model == "rigid"
    np.testing.assert_allclose(result.transform.matrix @ result.transform.matrix.T, np.eye(3), atol=1e-9)


def test_mi_3d_partial_fov_reaches_sub_mm(case3d: Case) -> None:
    result = refine(case3d.fixed, case3d.moving, case3d.initial, config=RefineConfig(metric="mi"))
    before, after = tre_mm(case3d.initial, case3d), tre_mm(result.transform, case3d)
    assert after < 0.3, f"TRE {before:.2f} -> {after:.3f} mm"
    assert result.loss_final < result.loss_initial


@pytest.mark.parametrize("metric", ["mind", "mi"])
def test_2d_reaches_sub_mm_and_is_deterministic(case2d: Case, metric: str) -> None:
    config = RefineConfig(metric=metric)
    first = refine(case2d.fixed, case2d.moving, case2d.initial, config=config)
    second = refine(case2d.fixed, case2d.moving, case2d.initial, config=config)
    before, after = tre_mm(case2d.initial, case2d), tre_mm(first.transform, case2d)
    assert before > 2.5
    assert after < 0.3, f"TRE {before:.2f} -> {after:.3f} mm"
    np.testing.assert_array_equal(first.transform.homogeneous(), second.transform.homogeneous())


def test_2d_zero_padding_without_mask_is_left_out(case2d: Case) -> None:
    # An exported ultrasound cone: zeros outside the FOV and no mask; fov_mask must find the FOV.
    moving = case2d.moving.with_array(case2d.moving.array, None)
    result = refine(case2d.fixed, moving, case2d.initial)
    assert tre_mm(result.transform, case2d) < 0.3


def test_similarity_2d_recovers_scale(case2d: Case, volumes) -> None:
    t1, gm, wm = volumes
    z, c = t1.array.shape[0] // 2, case2d.fixed.grid.center_mm()  # the slice case2d uses
    rigid = rigid_from_params([-8.0], [6.0, 4.0], c)
    true = compose(AffineTransform(1.06 * np.eye(2), c - 1.06 * c, "similarity"), rigid)
    perturbation = rigid_from_params([2.0], [2.0, 1.0], c)
    case = make_case(case2d.fixed, gm[z], wm[z], true, perturbation, (1.5, 3.0))
    case = replace(case, initial=compose(perturbation, rigid))  # the start knows nothing of the scale
    result = refine(case.fixed, case.moving, case.initial, model="similarity")
    assert tre_mm(case.initial, case) > 3.0
    assert tre_mm(result.transform, case) < 0.3
    assert result.transform.model == "similarity"
    assert abs(np.sqrt(np.linalg.det(result.transform.matrix)) - 1.06) < 0.005


@pytest.mark.parametrize("shift_mm", [75.0, 500.0])  # a sliver of overlap; none at all
def test_no_overlap_raises(case2d: Case, shift_mm: float) -> None:
    shift = AffineTransform(np.eye(2), np.array([shift_mm, 0.0]), "rigid")
    with pytest.raises(NoOverlapError, match="field of view"):
        refine(case2d.fixed, case2d.moving, compose(shift, case2d.true))


def test_fine_images_are_block_averaged_in_place() -> None:
    # A ramp linear in world mm on an oblique 0.25 mm grid averages to its value at each 1 mm centre.
    from crossreg.refine import _coarsened

    c, s = np.cos(np.deg2rad(30.0)), np.sin(np.deg2rad(30.0))
    grid = Grid((81, 103), (0.25, 0.25), (3.0, -7.0), np.array([[c, -s], [s, c]]))
    index_xyz = np.stack(np.meshgrid(np.arange(103), np.arange(81)), axis=-1).reshape(-1, 2)
    world = grid.index_to_world(index_xyz).reshape(81, 103, 2)
    mask = np.ones((81, 103), bool)
    mask[5, 9] = False
    fine = Image((2.0 * world[..., 0] - 3.0 * world[..., 1] + 5.0).astype(np.float32), grid, mask)
    coarse = _coarsened(fine, 1.0)
    assert coarse.grid.shape == (20, 25) and coarse.spacing_mm == (1.0, 1.0)
    centres = coarse.grid.index_to_world(
        np.stack(np.meshgrid(np.arange(25), np.arange(20)), -1).reshape(-1, 2)
    )
    expected = (2.0 * centres[:, 0] - 3.0 * centres[:, 1] + 5.0).reshape(20, 25)
    np.testing.assert_allclose(coarse.array, expected, atol=1e-3)
    assert not coarse.mask[1, 2] and coarse.mask.sum() == 20 * 25 - 1
    assert _coarsened(coarse, 1.0) is coarse


def test_2d_at_half_mm_reaches_sub_mm(case2d: Case) -> None:
    fine = [
        resample(im, axis_aligned_grid(im.grid.corners_mm(), 0.5)) for im in (case2d.fixed, case2d.moving)
    ]
    result = refine(*fine, case2d.initial)
    assert tre_mm(result.transform, case2d) < 0.3
