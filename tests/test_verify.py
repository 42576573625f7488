"""verify: the round trip of matches under a transform, the overlap check."""

import numpy as np
import pytest
import torch

from crossreg import datasets
from crossreg.describe import Described
from crossreg.errors import NoOverlapError
from crossreg.features.mind import MindFeatures
from crossreg.keypoints import grid_points
from crossreg.plan import Side
from crossreg.resample import working_image
from crossreg.transform import AffineTransform
from crossreg.verify import overlap_mask, round_trip


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
