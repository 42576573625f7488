"""MIND-SSC: dense maps, keypoint descriptors, and cross-modal matching on the shipped MNI152 data."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch

from crossreg.features.mind import (
    MindConfig,
    layout_offsets_mm,
    mind_descriptors,
    mind_maps,
    mind_ssc,
    ssc_pairs,
)
from crossreg.image import Grid, Image, from_array
from crossreg.imageio import load
from crossreg.keypoints import detect_keypoints
from crossreg.resample import resample, to_working_grid
from crossreg.transform import AffineTransform, rigid_from_params

DATA = resources.files("crossreg") / "data"


@pytest.fixture(scope="module")
def points_mm(work: Image) -> torch.Tensor:
    return detect_keypoints(work).points_mm


@pytest.fixture(scope="module")
def dense(work: Image) -> torch.Tensor:
    return mind_maps(work)


def _t2_like(image: Image, gm: np.ndarray, wm: np.ndarray, seed: int) -> Image:
    """A cross-modal version of a T1 image: non-monotonic LUT (CSF bright, WM darker than GM), bias, noise."""
    rng = np.random.default_rng(seed)
    t1 = image.array.astype(float)
    remapped = np.interp(t1, [0, 4, 40, 110, 166, 216, 245], [0.0, 0.55, 1.0, 0.85, 0.5, 0.28, 0.22])
    remapped *= 1.0 + 0.15 * (gm - wm)
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in t1.shape], indexing="ij")
    bias = np.exp(sum(c * a for c, a in zip(rng.normal(0, 0.25, t1.ndim), axes, strict=True)))
    noisy = remapped * bias + 0.03 * rng.normal(size=t1.shape) * (remapped > 0.01)
    return image.with_array(noisy, image.mask)


def _moving_grid(fixed: Image, transform: AffineTransform, spacing_mm: tuple[float, ...]) -> Grid:
    """Anisotropic grid, x axis flipped, over the moved image with the first 35% along y cut off."""
    corners = transform.apply(fixed.grid.corners_mm())
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    lo[1] += 0.35 * (hi[1] - lo[1])
    size = np.ceil((hi - lo) / np.asarray(spacing_mm)).astype(int) + 1
    origin = np.array([hi[0], *lo[1:]])
    direction = np.diag([-1.0] + [1.0] * (fixed.ndim - 1))
    return Grid(tuple(int(s) for s in size[::-1]), tuple(spacing_mm), tuple(origin), direction)


def _cross_modal_case(
    fixed: Image,
    source: Image,
    angles_deg: list[float],
    translation_mm: list[float],
    spacing_mm: tuple[float, ...],
) -> tuple[Image, AffineTransform]:
    """Moving working-grid image of ``source`` under a rigid motion, and the fixed->moving transform."""
    transform = rigid_from_params(np.array(angles_deg), np.array(translation_mm), fixed.grid.center_mm())
    moving = resample(source, _moving_grid(fixed, transform, spacing_mm), transform.inverse())
    return to_working_grid(moving, 2.0 if fixed.ndim == 3 else 1.0), transform


def _mutual_nn(d0: torch.Tensor, d1: torch.Tensor, ratio: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours passing the ratio test: index pairs ``(M,)``, ``(M,)``."""
    dist = torch.cdist(d0, d1)
    best = dist.topk(2, dim=1, largest=False)
    i0 = torch.arange(d0.shape[0])
    keep = (dist.argmin(dim=0)[best.indices[:, 0]] == i0) & (best.values[:, 0] < ratio * best.values[:, 1])
    return i0[keep], best.indices[keep, 0]


def _matched_points(fixed: Image, moving: Image) -> tuple[torch.Tensor, torch.Tensor]:
    """Detect, describe and mutually match; matched world points ``(M, d)`` in fixed and moving."""
    k0, k1 = detect_keypoints(fixed), detect_keypoints(moving)
    i0, i1 = _mutual_nn(mind_descriptors(fixed, k0.points_mm), mind_descriptors(moving, k1.points_mm))
    return k0.points_mm[i0].double(), k1.points_mm[i1].double()


def _precision(p0: torch.Tensor, p1: torch.Tensor, transform: AffineTransform) -> float:
    """Fraction of matches whose moving point lies within 4 mm of the fixed point mapped by ``transform``."""
    truth = torch.from_numpy(transform.apply(p0.numpy()))
    return float(((truth - p1).norm(dim=1) < 4.0).float().mean())


def test_dense_shapes_and_range(work: Image, dense: torch.Tensor) -> None:
    assert dense.shape == (24, *work.array.shape) and dense.dtype == torch.float32
    assert float(dense.min()) >= 0.0 and float(dense.max()) <= 1.0 + 1e-6
    assert len(ssc_pairs(3)) == 12 and len(ssc_pairs(2)) == 4


def test_world_mind_equals_classic_on_axis_aligned_grid(work: Image) -> None:
    """On an identity-direction grid world offsets are voxel offsets: the classic MIND, channels reordered."""
    world = mind_maps(work, MindConfig(dilations_mm=(2.0,), patch_sigma_mm=0.0))
    classic = mind_ssc(torch.from_numpy(work.array), dilation_vox=1, patch_radius_vox=0)
    array_pairs = [frozenset(p) for p in ssc_pairs(3)]  # steps in (z, y, x); mind_maps's are (x, y, z)
    order = [array_pairs.index(frozenset((a[::-1], b[::-1]))) for a, b in ssc_pairs(3)]
    inner = (slice(None), *(slice(2, -2),) * 3)
    assert torch.allclose(world[inner], classic[order][inner], atol=1e-3)


def test_mind_invariant_to_affine_intensity(
    work: Image, points_mm: torch.Tensor, dense: torch.Tensor
) -> None:
    n = len(points_mm)
    a = mind_descriptors(work, points_mm, maps=dense)
    b = mind_descriptors(work.with_array(0.01 * work.array + 300.0, work.mask), points_mm)
    assert a.shape == (n, 27 * 24) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=1), torch.ones(n), atol=1e-5)
    assert float((a * b).sum(dim=1).min()) > 0.999


def _restored(image: Image, flip: tuple[int, ...], order: tuple[int, ...]) -> Image:
    """The same physical image stored with array axes flipped, then transposed (geometry adjusted)."""
    d = image.ndim
    array = np.transpose(np.flip(image.array, axis=flip), order)
    flipped = [d - 1 - a for a in flip]  # flipped index (x, y, z) axes
    corner = np.zeros((1, d))
    corner[0, flipped] = image.grid.size_xyz[flipped] - 1
    old_axis = [d - 1 - order[d - 1 - i] for i in range(d)]  # old index axis of new index axis i
    sign = np.where(np.isin(old_axis, flipped), -1.0, 1.0)
    direction = np.asarray(image.direction)[:, old_axis] * sign
    spacing = tuple(image.spacing_mm[k] for k in old_axis)
    return from_array(array, spacing, tuple(image.grid.index_to_world(corner)[0]), direction)


def _index_aligned_dense(image: Image) -> torch.Tensor:
    """MIND with offsets along the array axes (what a direction-blind descriptor would compute)."""
    x = torch.from_numpy(np.ascontiguousarray(image.array))
    return torch.cat([mind_ssc(x, 1, 1), mind_ssc(x, 2, 1)])


@pytest.mark.parametrize(("flip", "order"), [((2,), (0, 1, 2)), ((0, 1), (2, 0, 1))])
def test_descriptor_is_direction_consistent(
    t1: Image, points_mm: torch.Tensor, flip: tuple[int, ...], order: tuple[int, ...]
) -> None:
    other = _restored(t1, flip, order)
    assert np.allclose(resample(other, t1.grid, mode="nearest").array, t1.array)  # same physical image
    kps = points_mm[:200]
    a, b = mind_descriptors(t1, kps), mind_descriptors(other, kps)
    assert float((a * b).sum(dim=1).min()) > 0.999
    blind = mind_descriptors(other, kps, maps=_index_aligned_dense(other))
    assert float((mind_descriptors(t1, kps, maps=_index_aligned_dense(t1)) * blind).sum(dim=1).mean()) < 0.95


def test_descriptor_on_oblique_grid(work: Image, points_mm: torch.Tensor) -> None:
    """Another direction matrix (30/15 deg oblique): world-aligned channels still agree, interpolated."""
    t1_1mm = load(DATA / "mni152_t1_1mm.nii.gz")
    rotation = rigid_from_params(np.array([30.0, 0.0, 15.0]), np.zeros(3), np.zeros(3)).matrix
    corner = work.grid.center_mm() - rotation @ ((work.grid.size_xyz - 1) * 1.0)
    oblique = resample(t1_1mm, Grid(work.grid.shape, (2.0,) * 3, tuple(corner), rotation))
    aligned = resample(t1_1mm, work.grid)
    kps = points_mm[:300]
    a, b = mind_descriptors(aligned, kps), mind_descriptors(oblique, kps)
    cos = (a * b).sum(dim=1)
    assert float(cos.mean()) > 0.93 and float(cos.min()) > 0.8  # measured 0.966 and 0.90
    blind = mind_descriptors(oblique, kps, maps=_index_aligned_dense(oblique))
    assert float((a * blind).sum(dim=1).mean()) < 0.5  # measured 0.14


def test_dense_passed_in_is_used_and_2d_layout(
    work: Image, points_mm: torch.Tensor, dense: torch.Tensor
) -> None:
    kps = points_mm[:50]
    assert torch.equal(mind_descriptors(work, kps, maps=dense), mind_descriptors(work, kps))
    assert layout_offsets_mm(2).shape == (25, 2) and layout_offsets_mm(3).shape == (27, 3)
    assert float(layout_offsets_mm(3).abs().max()) == MindConfig().layout_radius_mm


def test_cross_modal_matching_3d(t1: Image, work: Image) -> None:
    gm = load(DATA / "mni152_gm_2mm.nii.gz").array / 255.0
    wm = load(DATA / "mni152_wm_2mm.nii.gz").array / 255.0
    source = _t2_like(t1, gm, wm, seed=0)
    moving, transform = _cross_modal_case(t1, source, [11.4, -7.6, 6.1], [11.4, -6.1, 7.6], (1.6, 1.6, 3.5))
    assert 14.5 < transform.rotation_deg() < 16.0
    p0, p1 = _matched_points(work, moving)
    assert len(p0) > 400 and _precision(p0, p1, transform) > 0.9  # measured 0.96-0.97, ~830 (3 noise seeds)
    shifted = AffineTransform(transform.matrix, transform.translation_mm + np.array([0.0, 8.0, 0.0]))
    assert _precision(p0, p1, shifted) < 0.1  # the measure itself can fail


def test_cross_modal_matching_2d() -> None:
    vol = load(DATA / "mni152_t1_1mm.nii.gz")
    fixed = from_array(vol.array[80], spacing_mm=(1.0, 1.0), direction=np.diag([-1.0, -1.0]))
    zeros = np.zeros_like(fixed.array)
    source = _t2_like(fixed, zeros, zeros, seed=1)
    moving, transform = _cross_modal_case(fixed, source, [15.0], [12.0, -9.0], (0.8, 1.6))
    p0, p1 = _matched_points(to_working_grid(fixed, 1.0), moving)
    assert len(p0) > 50 and _precision(p0, p1, transform) > 0.85  # measured 0.94-0.97, ~90 (3 noise seeds)
