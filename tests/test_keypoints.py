"""Keypoint detection on the shipped MNI152 volume: placement, spacing, sampling, repeatability."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreg.image import Image, fov_mask, from_array
from crossreg.imageio import load
from crossreg.keypoints import KeypointConfig, Keypoints, detect_keypoints, saliency
from crossreg.resample import resample, to_working_grid
from crossreg.transform import rigid_from_params

DATA = resources.files("crossreg") / "data"


@pytest.fixture(scope="module")
def work_kps(work: Image) -> Keypoints:
    return detect_keypoints(work)


@pytest.fixture(scope="module")
def slice_2d() -> Image:
    vol = load(DATA / "mni152_t1_1mm.nii.gz")
    return from_array(vol.array[80], spacing_mm=(1.0, 1.0), direction=np.diag([-1.0, -1.0]))


def _outside_points_mm(image: Image, region: np.ndarray) -> np.ndarray:
    """World positions ``(M, d)`` of voxels outside ``region`` touching it (the array's rim included)."""
    padded = np.pad(region, 1, constant_values=False)
    near = np.zeros_like(padded)
    for axis in range(padded.ndim):
        near |= np.roll(padded, 1, axis) | np.roll(padded, -1, axis)
    index_zyx = np.argwhere(near & ~padded) - 1
    return image.grid.index_to_world(index_zyx[:, ::-1].astype(float))


def _min_distance_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each row of ``a`` ``(N, d)``, the distance to the nearest row of ``b`` ``(M, d)``: ``(N,)``."""
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values


def _nearest_other_mm(points_mm: torch.Tensor) -> torch.Tensor:
    """Distance from each point ``(N, d)`` to its nearest other point: ``(N,)``."""
    dist = torch.cdist(points_mm.double(), points_mm.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return dist.fill_diagonal_(float("inf")).min(dim=1).values


def _check_placement(image: Image, kps: Keypoints, config: KeypointConfig) -> None:
    region = image.valid_mask() & fov_mask(image)
    outside = torch.from_numpy(_outside_points_mm(image, region))
    assert _min_distance_mm(kps.points_mm, outside).min() >= config.border_mm
    assert _nearest_other_mm(kps.points_mm).min() >= config.nms_radius_mm


@pytest.mark.parametrize("nms_radius_mm", [2.0, 5.0])
def test_keypoints_inside_eroded_fov_and_apart(
    work: Image, work_kps: Keypoints, nms_radius_mm: float
) -> None:
    config = KeypointConfig(nms_radius_mm=nms_radius_mm, min_keypoints=0)  # detected points only
    kps = detect_keypoints(work, config)
    assert len(kps) > 100
    assert kps.points_mm.shape == (len(kps), 3) and kps.points_mm.dtype == torch.float32
    assert torch.all(kps.scores[:-1] >= kps.scores[1:])
    _check_placement(work, kps, config)


def test_few_maxima_are_completed_by_a_grid_inside_the_fov(work: Image) -> None:
    # A 40 mm ball of the brain: few saliency maxima, as in an ultrasound cone.
    centre = np.array(work.grid.shape) // 2
    ball = np.linalg.norm(np.indices(work.grid.shape) - centre[:, None, None, None], axis=0) * 2.0 < 20.0
    small = work.with_array(work.array, ball)
    config = KeypointConfig()
    detected = detect_keypoints(small, replace(config, min_keypoints=0))
    kps = detect_keypoints(small, config)
    assert len(detected) < config.min_keypoints and len(kps) > len(detected) + 100
    grid = kps.points_mm[len(detected) :]
    assert torch.all(kps.scores[len(detected) :] == 0)
    outside = torch.from_numpy(_outside_points_mm(small, small.valid_mask() & fov_mask(small)))
    assert _min_distance_mm(grid, outside).min() >= config.grid_border_mm
    assert _nearest_other_mm(grid).min() >= config.grid_spacing_mm - 1e-4


def test_keypoints_in_world_space_of_any_grid(t1: Image, work_kps: Keypoints) -> None:
    """The native grid (flipped x and y) and the working grid find the same anatomy in world mm."""
    native, aligned = detect_keypoints(t1), work_kps
    assert float((_min_distance_mm(native.points_mm, aligned.points_mm) < 1.0).float().mean()) > 0.9


def test_explicit_mask_restricts_keypoints(work: Image) -> None:
    mask = np.zeros(work.array.shape, bool)
    mask[:, :, : work.array.shape[2] // 2] = True
    kps = detect_keypoints(work, mask=mask)
    assert len(kps) > 20
    index_x = work.grid.world_to_index(kps.points_mm.double().numpy())[:, 0]
    border_vox = KeypointConfig().border_mm / work.spacing_mm[0]
    assert index_x.max() < work.array.shape[2] // 2 - border_vox


def test_seeds_give_different_but_equally_good_sets(work: Image) -> None:
    config = KeypointConfig(sampling="probabilistic", max_keypoints=300)
    a, b, again = (detect_keypoints(work, config, seed=s) for s in (0, 1, 0))
    assert len(a) == len(b) == 300
    assert torch.equal(a.points_mm, again.points_mm)
    shared = float((_min_distance_mm(a.points_mm, b.points_mm) < 1e-3).float().mean())
    assert 0.2 < shared < 0.9
    assert abs(float(a.scores.sum() - b.scores.sum())) < 0.05 * float(a.scores.sum())


def test_top_is_deterministic_and_most_salient(work: Image) -> None:
    config = KeypointConfig(sampling="top", max_keypoints=300)
    a, b = detect_keypoints(work, config, seed=0), detect_keypoints(work, config, seed=7)
    assert torch.equal(a.points_mm, b.points_mm)
    every = detect_keypoints(work, replace(config, max_keypoints=10**6))
    assert len(every) > 300 and torch.equal(a.scores, every.scores[:300])  # the 300 best maxima
    assert float(_min_distance_mm(a.points_mm, every.points_mm).max()) < 1e-3
    sampled = detect_keypoints(work, replace(config, sampling="probabilistic"), seed=3)
    assert float(a.scores.sum()) > float(sampled.scores.sum())


@pytest.mark.parametrize("cap", [1, 400])
def test_count_cap_holds(work: Image, cap: int) -> None:
    for sampling in ("top", "probabilistic"):
        assert (
            len(detect_keypoints(work, KeypointConfig(max_keypoints=cap, sampling=sampling, min_keypoints=0)))
            == cap
        )


def test_2d_keypoints(slice_2d: Image) -> None:
    config = KeypointConfig(min_keypoints=0)
    kps = detect_keypoints(slice_2d, config)
    assert kps.points_mm.shape[1] == 2 and len(kps) > 100
    _check_placement(slice_2d, kps, config)


def test_repeatable_under_rigid_motion(t1: Image, work_kps: Keypoints) -> None:
    transform = rigid_from_params(np.array([9.0, -8.0, 8.0]), np.array([9.0, -9.0, 7.0]), t1.grid.center_mm())
    moved = to_working_grid(resample(t1, t1.grid, transform.inverse()), 2.0)
    k0, k1 = work_kps, detect_keypoints(moved)
    mapped = torch.from_numpy(transform.apply(k0.points_mm.double().numpy()))
    inside = torch.from_numpy(moved.grid.contains(mapped.numpy(), margin_vox=-8))
    repeat = (_min_distance_mm(mapped[inside], k1.points_mm) < 3.0).float().mean()
    assert inside.sum() > 500 and float(repeat) > 0.6  # measured 0.76


def test_saliency_invariant_to_affine_intensity(work: Image) -> None:
    a = saliency(work)
    b = saliency(work.with_array(3.0 * work.array + 50.0, work.mask))
    c = saliency(work.with_array(-work.array, work.mask))
    assert torch.allclose(a, b, atol=1e-3 * float(a.max()))
    assert torch.allclose(a, c, atol=1e-3 * float(a.max()))


def test_saliency_prefers_blobs_to_edges() -> None:
    yy, xx = np.mgrid[:64, :64].astype(float)
    edge = (xx > 40).astype(float)
    blob = np.exp(-((xx - 16) ** 2 + (yy - 32) ** 2) / (2 * 3.0**2))
    sal = saliency(from_array(edge + 0.5 * blob))
    peak = np.unravel_index(int(sal.argmax()), sal.shape)
    assert abs(peak[0] - 32) <= 1 and abs(peak[1] - 16) <= 1  # the blob, not the edge, wins
    assert float(sal[:20, 30:50].max()) < 0.05 * float(sal.max())  # along the edge: ~0


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    spacing=st.tuples(st.floats(0.5, 2.0), st.floats(0.5, 2.0)),
    nms_radius_mm=st.floats(1.0, 6.0),
)
def test_placement_property_2d(seed: int, spacing: tuple[float, float], nms_radius_mm: float) -> None:
    """Random smooth images on random anisotropic grids: distance and border guarantees always hold."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(size=(48, 40))
    image = from_array(arr, spacing_mm=spacing, mask=rng.random((48, 40)) > 0.005)
    config = KeypointConfig(
        nms_radius_mm=nms_radius_mm, border_mm=3.0, scales_mm=(2.0,), min_saliency=0.0, min_keypoints=0
    )
    kps = detect_keypoints(image, config, mask=image.valid_mask())
    if len(kps) > 1:
        region = image.valid_mask()
        outside = torch.from_numpy(_outside_points_mm(image, region))
        assert _min_distance_mm(kps.points_mm, outside).min() >= config.border_mm
        assert _nearest_other_mm(kps.points_mm).min() >= config.nms_radius_mm
