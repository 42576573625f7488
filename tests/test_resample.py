import numpy as np
import torch

from crossreg.image import Grid, Image
from crossreg.resample import resample, sample_world, to_working_grid
from crossreg.transform import rigid_from_params


def restored(image: Image, grid: Grid) -> Image:
    return Image(image.array, grid, None, "restored")


def flipped_copy(image: Image) -> Image:
    """The same physical image stored with every array axis reversed (direction and origin adjusted)."""
    g = image.grid
    far_corner = g.index_to_world((g.size_xyz - 1)[None])[0]
    grid = Grid(g.shape, g.spacing_mm, tuple(far_corner), -np.asarray(g.direction))
    return Image(image.array[::-1, ::-1, ::-1].copy(), grid)


def oblique_copy(image: Image, angles_deg=(25.0, -10.0, 40.0)) -> Image:
    """The image resampled onto an oblique, anisotropic grid (a different storage of the same anatomy)."""
    rot = rigid_from_params(np.array(angles_deg), np.zeros(3), np.zeros(3)).matrix
    spacing = (1.5, 1.7, 2.3)
    c = image.grid.center_mm()
    size = np.array([110, 120, 100])
    origin = c - rot @ (np.array(spacing) * (size - 1) / 2)
    grid = Grid(tuple(size[::-1].tolist()), spacing, tuple(origin), rot)
    return resample(image, grid)


def test_flipped_storage_gives_identical_working_image(t1_2mm):
    a = to_working_grid(t1_2mm, 3.0)
    b = to_working_grid(flipped_copy(t1_2mm), 3.0)
    assert a.grid.shape == b.grid.shape
    np.testing.assert_allclose(a.grid.origin_mm, b.grid.origin_mm, atol=1e-9)
    np.testing.assert_allclose(a.array, b.array, atol=1e-3)


def test_oblique_storage_gives_same_working_image_where_both_hold_data(t1_2mm):
    a = to_working_grid(t1_2mm, 2.0)
    ob = oblique_copy(t1_2mm)
    b = resample(ob, a.grid)
    both = a.mask & b.mask
    assert both.mean() > 0.3
    err = np.abs(a.array[both] - b.array[both])
    # Two trilinear resamplings blur a little; an ignored direction would be off by tens of intensity units.
    assert np.median(err) < 3.0
    ignored = Image(ob.array, Grid(ob.grid.shape, ob.grid.spacing_mm, ob.grid.origin_mm, np.eye(3)))
    bad = resample(ignored, a.grid)
    both_bad = a.mask & bad.mask
    assert np.median(np.abs(a.array[both_bad] - bad.array[both_bad])) > 10 * np.median(err)


def test_resample_mask_marks_outside(t1_2mm):
    shift = rigid_from_params(np.zeros(3), np.array([60.0, 0.0, 0.0]), np.zeros(3))
    out = resample(t1_2mm, t1_2mm.grid, shift)
    assert 0.2 < out.mask.mean() < 0.8
    assert np.all(out.array[~out.mask] == 0.0)


def test_2d_resample_rotation_matches_numpy_rotation():
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    arr = np.sin(xx / 5.0) + 0.5 * np.cos(yy / 3.0)
    img = Image(arr, Grid(arr.shape, (1.0, 1.0), (0.0, 0.0), np.eye(2)))
    rot90 = rigid_from_params(np.array([90.0]), np.zeros(2), np.array([31.5, 31.5]))
    out = resample(img, img.grid, rot90)
    # Output point (x, y) samples input at R(x, y) = (63 - y, x) (R90 about the centre),
    # so out[y, x] = arr[x, 63 - y].
    np.testing.assert_allclose(out.array, arr.T[::-1, :], atol=1e-4)


def test_single_slice_target_grid_samples_its_plane(t1_2mm):
    g = t1_2mm.grid
    k = 40
    plane = Grid((1, *g.shape[1:]), g.spacing_mm, tuple(g.index_to_world([[0, 0, k]])[0]), g.direction)
    out = resample(t1_2mm, plane)
    np.testing.assert_allclose(out.array[0], t1_2mm.array[k], atol=1e-3)


def test_sample_world_reads_world_points():
    grid_values = torch.arange(12.0).reshape(1, 3, 4)
    grid = Grid((3, 4), (2.0, 1.0), (10.0, 0.0), np.eye(2))
    # world (x=12, y=1) is index (1, 1): value 5; halfway to (2, 1) is 5.5.
    got = sample_world(grid_values, grid, torch.tensor([[12.0, 1.0], [14.0, 1.0], [13.0, 1.0]]))
    np.testing.assert_allclose(got.numpy()[0], [5.0, 6.0, 5.5])
