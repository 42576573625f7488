import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreg.errors import InvalidImageError
from crossreg.image import (
    Grid,
    Image,
    axis_aligned_grid,
    crop_to_mask,
    data_mask,
    fov_mask,
    from_array,
    robust_normalize,
)
from crossreg.transform import rigid_from_params


def oblique_grid(shape=(10, 12, 14)) -> Grid:
    rot = rigid_from_params(np.array([20.0, -35.0, 50.0]), np.zeros(3), np.zeros(3)).matrix
    return Grid(shape, (0.8, 1.3, 2.5), (10.0, -20.0, 5.0), rot)


def test_index_to_world_follows_itk(t1_2mm):
    import SimpleITK as sitk

    from crossreg.imageio import to_sitk

    itk = to_sitk(t1_2mm)
    idx = np.array([[3, 7, 11], [40, 2, 60]])
    expected = np.array([itk.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in idx.astype(float)])
    np.testing.assert_allclose(t1_2mm.grid.index_to_world(idx), expected, atol=1e-9)
    # The shipped template is RAS-stored: index x grows towards patient Left-to-Right flipped (LPS -x).
    assert t1_2mm.grid.index_to_world([[1, 0, 0]])[0, 0] < t1_2mm.grid.index_to_world([[0, 0, 0]])[0, 0]
    assert isinstance(itk, sitk.Image)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=3, max_size=3))
def test_world_index_round_trip(index):
    grid = oblique_grid()
    idx = np.array([index])
    np.testing.assert_allclose(grid.world_to_index(grid.index_to_world(idx)), idx, atol=1e-9)


def test_axis_aligned_grid_covers_corners():
    grid = oblique_grid()
    work = axis_aligned_grid(grid.corners_mm(), 1.5)
    assert np.allclose(work.direction, np.eye(3))
    assert work.contains(grid.corners_mm(), margin_vox=1e-6).all()


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((20, 20, 20)), "constant"),
        (np.full((20, 20, 20), np.nan), "NaN"),
        (np.ones((20, 20, 4)), "at least"),
        (np.ones((2, 20, 20, 20)), "4D"),
        (np.pad(np.ones((3, 3, 3)), 10), "empty"),
        (np.pad(np.ones((3, 3, 3)), 10), "empty"),
    ],
)
def test_invalid_images_rejected(array, message):
    arr = np.array(array)
    if arr.ndim == 3 and message == "NaN":
        arr[0, 0, 0] = 1.0
    with pytest.raises(InvalidImageError, match=message):
        from_array(arr)


def test_fov_mask_finds_partial_coverage(t1_2mm):
    arr = t1_2mm.array.copy()
    arr[:, :, : arr.shape[2] // 2] = 0.0
    mask = fov_mask(t1_2mm.with_array(arr))
    assert not mask[:, :, : arr.shape[2] // 2 - 2].any()
    head = fov_mask(t1_2mm)
    # The template's head fills roughly half of its cropped box; the cut removes about half of that.
    assert 0.3 < head.mean() < 0.7
    assert 0.35 < mask.sum() / head.sum() < 0.65


def test_data_mask_drops_a_scanners_padding_and_its_rim():
    rng = np.random.default_rng(0)
    array = rng.uniform(0.1, 1.0, (12, 14, 16)).astype(np.float32)
    array[:, :, :5] = 0.0  # the box around the data, as a scanner pads an ultrasound cone
    image = from_array(array)
    mask = data_mask(image)
    assert not mask[:, :, :6].any()  # the padding and the voxels next to it
    assert mask[:, :, 6:].all()  # the data, up to the box's own faces
    noise = from_array(rng.uniform(0.1, 1.0, (8, 8, 8)))
    assert data_mask(noise).sum() >= 8**3 - 27  # no padding: all but the minimum and its neighbours


def test_robust_normalize_range(t1_2mm):
    norm = robust_normalize(t1_2mm)
    assert norm.array.min() == 0.0 and norm.array.max() == 1.0
    assert norm.grid is t1_2mm.grid


def test_crop_to_mask_keeps_world_positions():
    grid = oblique_grid()
    rng = np.random.default_rng(3)
    array = rng.random(grid.shape).astype(np.float32)
    mask = np.zeros(grid.shape, bool)
    mask[2:5, 3:9, 4:10] = True
    cropped = crop_to_mask(Image(array, grid, mask), margin_vox=1)
    assert cropped.grid.shape == (5, 8, 8)
    # The voxel at crop index (i, j, k) is the original voxel at (i+1, j+2, k+3), at the same world point.
    np.testing.assert_array_equal(cropped.array, array[1:6, 2:10, 3:11])
    np.testing.assert_allclose(
        cropped.grid.index_to_world([[0, 0, 0]]), grid.index_to_world([[3, 2, 1]]), atol=1e-9
    )
    assert crop_to_mask(Image(array, grid)).grid.shape == grid.shape  # no mask: unchanged
