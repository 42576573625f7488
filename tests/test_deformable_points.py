"""The deformable stage's point term: targets in the fixed -> moving convention, matches that disagree
with their neighbours dropped, and a known smooth displacement recovered from matches alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from crossreg.deformable import DeformableConfig, deform
from crossreg.deformable.points import AGREEMENT_MM, agreeing, point_targets
from crossreg.image import Grid, Image
from crossreg.transform import AffineTransform

GRID = Grid((64, 64), (2.0, 2.0), (0.0, 0.0), np.eye(2))


def _bump_mm(points_mm: np.ndarray) -> np.ndarray:
    """A smooth displacement ``(N, 2)``: a Gaussian bump of 4 mm around (60, 60) mm."""
    r2 = ((points_mm - 60.0) ** 2).sum(1, keepdims=True)
    return 4.0 * np.exp(-r2 / (2 * 20.0**2)) * np.array([0.8, -0.6])


def _rotation(deg: float) -> AffineTransform:
    a = np.deg2rad(deg)
    return AffineTransform(np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]), np.array([3.0, -5.0]))


def test_targets_follow_the_fixed_to_moving_convention_and_the_capture_radius():
    rng = np.random.default_rng(0)
    fixed_mm = rng.uniform(10, 110, (60, 2))
    linear = _rotation(10.0)
    moving_mm = linear.apply(fixed_mm + _bump_mm(fixed_mm))  # p_moving = linear(x + u(x))
    moving_mm[0] = linear.apply(fixed_mm[0] + 15.0)  # asks for 21 mm: beyond the capture radius
    targets = point_targets(fixed_mm, moving_mm, linear, GRID, capture_mm=10.0)
    assert len(targets) == 59
    index = GRID.world_to_index(fixed_mm[1:])
    np.testing.assert_allclose(targets.index_xyz.numpy(), index, atol=1e-3)
    np.testing.assert_allclose(targets.target_vox.numpy() * 2.0, _bump_mm(fixed_mm[1:]), atol=1e-3)


def test_matches_that_disagree_with_their_neighbours_are_dropped():
    ticks = np.arange(0.0, 100.0, 6.0)
    points = np.stack(np.meshgrid(ticks, ticks), -1).reshape(-1, 2)
    target = _bump_mm(points)
    wrong = np.array([5, 40, 100, 200])
    target[wrong] += np.array([3.0, 2.0])  # 3.6 mm off what the tissue around them does
    kept = agreeing(torch.tensor(points), torch.tensor(target), 8, AGREEMENT_MM).numpy()
    assert not kept[wrong].any()
    assert kept.sum() == len(points) - len(wrong)


def test_matches_alone_recover_a_smooth_displacement():
    """On flat images (no features: only the point term and the regulariser act) the field is what the
    matches say, the bump (2.2 mm on average where it is probed) within 0.4 mm between them, with a
    fifth of the matches wrong; without them, nothing."""
    image = Image(np.ones((64, 64), np.float32), GRID)
    rng = np.random.default_rng(1)
    fixed_mm = rng.uniform(16, 104, (400, 2))
    moving_mm = fixed_mm + _bump_mm(fixed_mm)
    wrong = rng.random(len(fixed_mm)) < 0.2
    moving_mm[wrong] += rng.uniform(-8.0, 8.0, (int(wrong.sum()), 2))
    identity = AffineTransform.identity(2)
    probes = rng.uniform(30, 90, (50, 2))
    truth = _bump_mm(probes)
    config = DeformableConfig(iterations=100)
    found = deform(image, image, identity, config, matches=(fixed_mm, moving_mm))
    error = np.linalg.norm(found.transform.apply(probes) - probes - truth, axis=1)
    assert error.mean() < 0.4, error.mean()
    assert found.negative_jacobian == 0.0 and 0.6 * len(fixed_mm) < found.n_points < 0.9 * len(fixed_mm)
    unused = deform(image, image, identity, replace(config, point_weight=0.0), matches=(fixed_mm, moving_mm))
    assert np.linalg.norm(unused.transform.apply(probes) - probes - truth, axis=1).mean() > 2.0
