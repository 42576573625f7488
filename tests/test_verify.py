"""verify: the round trip of matches under a transform, the overlap check, ambiguity and agreement."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from crossreg import datasets
from crossreg.config import MIN_AGREEMENT, RegisterConfig
from crossreg.describe import Described
from crossreg.errors import NoOverlapError, RegistrationFailed
from crossreg.estimate import RansacConfig, estimate
from crossreg.evaluate.cases import synthetic_cases
from crossreg.evaluate.metrics import tre_mm
from crossreg.features.mind import MindFeatures
from crossreg.keypoints import grid_points
from crossreg.plan import Side
from crossreg.register import register
from crossreg.resample import working_image
from crossreg.synth.cases import make_case
from crossreg.transform import AffineTransform, compose, rigid_from_params
from crossreg.verify import agreement, ambiguity, overlap_mask, round_trip


@pytest.fixture(scope="module")
def described() -> Described:
    work = working_image(datasets.mni152_slice(1, "axial"), 2.0)
    points = torch.from_numpy(grid_points(work, work.valid_mask(), 6.0, 4.0)).float()
    description = MindFeatures().describe(work)
    return Described(Side("fixed", work, 0), points, description.at(points), description)


def shift(dx_mm: float) -> AffineTransform:
    return AffineTransform(np.eye(2), np.array([dx_mm, 0.0]), "rigid")


def test_points_are_fixed_points_of_matching_under_the_right_transform(described):
    trip = round_trip(described, described.description, shift(0.0), described.points_mm)
    assert float(trip.error_mm.max()) == 0.0
    assert torch.equal(trip.back_mm.float(), described.points_mm)


def test_a_wrong_transform_sends_most_points_elsewhere(described):
    trip = round_trip(described, described.description, shift(12.0), described.points_mm)
    assert float((trip.error_mm <= 4.0).float().mean()) < 0.2
    # Half a grid step is still matched back to the start: the test tolerates sub-grid error.
    near = round_trip(described, described.description, shift(1.0), described.points_mm)
    assert float((near.error_mm <= 4.0).float().mean()) > 0.9


def test_a_transform_that_leaves_no_overlap_is_refused(described):
    image = described.side.image
    assert overlap_mask(image, image, shift(0.0)).sum() == image.valid_mask().sum()
    with pytest.raises(NoOverlapError, match="overlaps only"):
        overlap_mask(image, image, shift(500.0))


@pytest.fixture(scope="module")
def cone():
    """An ultrasound cone of the shipped MRI (kind ``us``) and both images on 2 mm working grids."""
    t1, tissues = datasets.mni152_t1(2), datasets.mni152_tissues(2)
    case = make_case(t1, "us", 15.0, 15.0, tissues=tissues, seed=4)
    return case, working_image(case.fixed, 2.0), working_image(case.moving, 2.0)


def test_agreement_peaks_at_the_true_transform(cone):
    case, fixed, moving = cone
    right = agreement(fixed, moving, case.true_transform, overlap_mask(fixed, moving, case.true_transform))
    off = compose(case.true_transform, AffineTransform(np.eye(3), np.array([0.0, 10.0, 0.0]), "rigid"))
    wrong = agreement(fixed, moving, off, overlap_mask(fixed, moving, off))
    # Measured: 0.36 at the truth, 0.24 two millimetres off, 0.04 at four, -0.01 at ten.
    assert right > 0.15 and wrong < 0.05, (right, wrong)


def matches(transforms, n_each: int, n_outliers: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_each`` matches consistent with each of ``transforms`` (fixed -> moving) and ``n_outliers``
    random ones, all in a 100 mm cube: ``(M, 3)`` fixed and moving points."""
    rng = np.random.default_rng(seed)
    fixed = [rng.uniform(0, 100, (n_each, 3)) for _ in transforms]
    moving = [t.apply(p) + rng.normal(0, 0.5, p.shape) for t, p in zip(transforms, fixed, strict=True)]
    fixed.append(rng.uniform(0, 100, (n_outliers, 3)))
    moving.append(rng.uniform(0, 100, (n_outliers, 3)))
    return torch.from_numpy(np.concatenate(fixed)), torch.from_numpy(np.concatenate(moving))


TRUTH = rigid_from_params(np.array([6.0, -3.0, 10.0]), np.array([5.0, -3.0, 8.0]), np.full(3, 50.0))
OTHER = rigid_from_params(np.array([-10.0, 5.0, 0.0]), np.array([-20.0, 15.0, 0.0]), np.full(3, 50.0))
REGION_MM = np.random.default_rng(1).uniform(0, 100, (500, 3))


def ambiguity_of(
    fixed_mm: torch.Tensor, moving_mm: torch.Tensor, ransac: RansacConfig | None = None
) -> float:
    ransac = ransac or RansacConfig()
    found = estimate(fixed_mm, moving_mm, "rigid", ransac, seed=0)
    return ambiguity(found, fixed_mm, moving_mm, REGION_MM, "rigid", ransac, seed=0)


def test_one_transform_among_outliers_is_not_ambiguous():
    assert ambiguity_of(*matches([TRUTH], 100, 40)) < 0.05


def test_two_equal_disjoint_groups_are_ambiguous():
    assert ambiguity_of(*matches([TRUTH, OTHER], 60, 20)) > 0.8


def test_a_second_group_in_one_patch_is_one_piece_of_evidence():
    fixed_mm, moving_mm = matches([TRUTH, OTHER], 60, 20)
    patch = torch.arange(60, 100)  # 40 of OTHER's matches, squeezed into a 12.5 mm cube
    fixed_mm[patch] = 50.0 + (fixed_mm[patch] - 50.0) / 8.0
    moving_mm[patch] = torch.from_numpy(OTHER.apply(fixed_mm[patch].numpy()))
    keep = torch.cat([torch.arange(60), patch, torch.arange(120, 140)])
    fixed_mm, moving_mm = fixed_mm[keep], moving_mm[keep]
    assert ambiguity_of(fixed_mm, moving_mm) > 0.5
    assert ambiguity_of(fixed_mm, moving_mm, RansacConfig(independence_mm=12.5)) < 0.15


def test_too_few_other_matches_leave_no_ambiguity():
    fixed_mm, moving_mm = matches([TRUTH], 12, 2)
    assert ambiguity_of(fixed_mm, moving_mm) == 0.0


def test_agreement_gate_refuses_a_confident_wrong_answer():
    # A 2D CT-like slab (bench seed 0, case 0) on which the matcher network's matches agree on a
    # transform 38 mm off with confidence 0.96: the images do not look alike under it.
    (case,) = synthetic_cases(("ct",), 1, seed=0, ndim=2)
    config = RegisterConfig(matching="matcher2d", min_agreement=-1.0)
    guess = register(case.fixed, case.moving, config)
    error = tre_mm(guess.transform, case.true_transform, case.landmarks_fixed_mm).mean()
    assert error > 10.0 and guess.confidence >= 0.5 and guess.agreement < MIN_AGREEMENT
    with pytest.raises(RegistrationFailed, match="do not look alike"):
        register(case.fixed, case.moving, replace(config, min_agreement=MIN_AGREEMENT))
