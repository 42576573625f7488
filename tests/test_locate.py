"""Finding points of one image in another: the coarse-to-fine search, its round trip, and its errors."""

import numpy as np
import pytest
import torch

from crossreg import datasets
from crossreg.errors import CrossregError, InvalidConfigError
from crossreg.features.base import Description
from crossreg.features.mind import MindFeatures
from crossreg.locate import LocateConfig, _offsets, field_of_view_points, find_points, locate
from crossreg.resample import working_image
from crossreg.synth.geometry import extract_slice, move, salient_landmarks
from crossreg.transform import AffineTransform


@pytest.fixture(scope="module")
def axial():
    return extract_slice(datasets.mni152_t1(2), "axial", 45)


def test_mind_finds_points_of_a_shifted_slice_and_they_come_back(axial):
    shift = AffineTransform(np.eye(2), np.array([7.0, -5.0]))
    moved = move(axial, shift)
    points = salient_landmarks(axial, 15)
    found = find_points(axial, points, moved, MindFeatures())
    error = np.linalg.norm(found.points_mm - shift.apply(points), axis=1)
    assert np.median(error) < 1.0 and np.percentile(error, 80) < 2.0, error.round(2)
    assert found.reliable.mean() >= 0.8 and (found.round_trip_mm[found.reliable] <= 4.0).all()
    assert found.points_mm.shape == points.shape and found.score.shape == (15,)


def _grid_description(image, coarse: bool) -> Description:
    """A description whose descriptor is the one-hot position on a 4 mm lattice (exact answers)."""
    work = working_image(image, 2.0)

    def at(points_mm: torch.Tensor) -> torch.Tensor:
        cell = torch.round(points_mm.double() / 4.0)
        code = torch.cat([f(cell * w) for w in (0.7, 0.11, 0.029) for f in (torch.cos, torch.sin)], dim=1)
        return torch.nn.functional.normalize(code.float(), dim=1)

    return Description(work, at, coarse_at=at if coarse else None)


@pytest.mark.parametrize("coarse", [True, False])
def test_search_returns_the_most_similar_point_with_or_without_a_coarse_descriptor(axial, coarse):
    desc = _grid_description(axial, coarse)
    points = field_of_view_points(desc, 20.0).numpy()[:12]
    found = locate(desc, points, desc, LocateConfig(round_trip_mm=6.0))
    # The descriptor is constant on 4 mm cells: the answer lies in the query's cell, and comes back
    # to it (within the cell's diagonal).
    assert np.abs(np.round(found.points_mm / 4.0) - np.round(points / 4.0)).max() == 0
    np.testing.assert_allclose(found.score, 1.0, atol=1e-5)
    assert found.reliable.all()


def test_offsets_cover_a_cube():
    offsets = _offsets(2.0, 1.0, 3)
    assert offsets.shape == (125, 3) and offsets.abs().max() == 2.0
    assert (offsets == 0).all(dim=1).sum() == 1


def test_bad_points_and_settings_are_refused(axial):
    with pytest.raises(CrossregError, match="outside the image they were placed on"):
        far = np.array([[0.0, 0.0], [900.0, 0.0]]) + axial.grid.center_mm()
        find_points(axial, far, axial, MindFeatures())
    with pytest.raises(CrossregError, match=r"points must be \(N, 2\)"):
        find_points(axial, np.zeros((3, 3)), axial, MindFeatures())
    with pytest.raises(InvalidConfigError):
        LocateConfig(window_mm=0.0)
