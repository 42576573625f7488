"""The whole pipeline on real MRI: a cross-modal copy under a known 15 deg / 15 mm motion is recovered."""

import numpy as np
import pytest

from crossreg import datasets
from crossreg.errors import DimensionMismatchError, RegistrationFailed
from crossreg.evaluate.metrics import tre_mm
from crossreg.image import Grid, Image
from crossreg.register import RegisterConfig, register
from crossreg.synth.cases import make_case


@pytest.fixture(scope="module")
def case3d():
    """T2-like moving image, 60% of the head in view, 2 x 2 x 4 mm voxels, 15 deg / 15 mm."""
    t1, tissues = datasets.mni152_t1(2), datasets.mni152_tissues(2)
    return make_case(
        t1, "t2", 15.0, 15.0, fov_fraction=0.6, moving_spacing_mm=(2.0, 2.0, 4.0), tissues=tissues
    )


@pytest.fixture(scope="module")
def result3d(case3d):
    return register(case3d.fixed, case3d.moving, RegisterConfig(seed=0))


def mean_tre(case, transform) -> float:
    return float(tre_mm(transform, case.true_transform, case.landmarks_fixed_mm).mean())


def test_3d_cross_modal_partial_fov_recovered(case3d, result3d):
    assert mean_tre(case3d, result3d.ransac_transform) < 2.0
    assert mean_tre(case3d, result3d.transform) < 0.5
    assert result3d.confidence > 0.9
    # The inverse transform (a convention mix-up) would be off by about twice the motion.
    assert mean_tre(case3d, result3d.transform.inverse()) > 15.0
    inl = result3d.inliers
    moved = case3d.true_transform.apply(result3d.fixed_points_mm[inl])
    assert np.median(np.linalg.norm(moved - result3d.moving_points_mm[inl], axis=1)) < 3.0


def flipped_storage(image: Image) -> Image:
    """The same physical image stored with x and z array axes reversed."""
    g = image.grid
    origin = g.index_to_world([[g.size_xyz[0] - 1, 0, g.size_xyz[2] - 1]])[0]
    direction = np.asarray(g.direction) @ np.diag([-1.0, 1.0, -1.0])
    return Image(image.array[::-1, :, ::-1].copy(), Grid(g.shape, g.spacing_mm, tuple(origin), direction))


def test_flipped_axes_storage_gives_the_same_physical_transform(case3d, result3d):
    flipped = register(case3d.fixed, flipped_storage(case3d.moving), RegisterConfig(seed=0))
    pts = case3d.landmarks_fixed_mm
    assert np.abs(flipped.transform.apply(pts) - result3d.transform.apply(pts)).max() < 0.5


def test_2d_cross_modal_recovered():
    sl = datasets.mni152_slice(1, "axial")
    case = make_case(sl, "t2", 15.0, 15.0, fov_fraction=0.7, moving_spacing_mm=(1.0, 1.5), seed=1)
    result = register(case.fixed, case.moving, RegisterConfig(seed=0))
    assert mean_tre(case, result.transform) < 0.5
    assert mean_tre(case, result.transform.inverse()) > 15.0


def test_dimension_mismatch(case3d):
    with pytest.raises(DimensionMismatchError):
        register(case3d.fixed, datasets.mni152_slice(1, "axial"))


def test_unrelated_images_fail_loudly(case3d):
    rng = np.random.default_rng(0)
    noise = case3d.fixed.with_array(rng.random(case3d.fixed.array.shape).astype(np.float32))
    with pytest.raises(RegistrationFailed, match="need 8"):
        register(case3d.fixed, noise, RegisterConfig(seed=0, refine=None))


def test_refinement_that_jumps_away_from_the_inliers_is_refused():
    from crossreg.register import _kept_refinement
    from crossreg.transform import AffineTransform

    ransac = AffineTransform.identity(3)
    inliers = np.random.default_rng(0).uniform(-50, 50, (30, 3))
    polish = AffineTransform(np.eye(3), np.array([0.5, -0.3, 0.2]))
    jump = AffineTransform(np.eye(3), np.array([9.0, 0.0, 0.0]))
    assert _kept_refinement(ransac, polish, inliers, RegisterConfig()) is polish
    assert _kept_refinement(ransac, jump, inliers, RegisterConfig()) is ransac
