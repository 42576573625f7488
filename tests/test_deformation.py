"""DeformableTransform: the fixed -> moving convention, and files SimpleITK (and ANTs) read the same way."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from crossreg.deformation import DeformableTransform
from crossreg.errors import TransformIOError
from crossreg.image import Grid, Image
from crossreg.imageio import to_sitk as image_to_sitk
from crossreg.resample import grid_points_mm
from crossreg.transform import AffineTransform, rigid_from_params


def _field_grid() -> Grid:
    """An oblique, anisotropic grid: any direction handling error shows."""
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([-1, 1, 1])
    return Grid((20, 24, 22), (2.5, 2.0, 3.0), (40.0, -30.0, -25.0), direction)


def _bump(grid: Grid, centre_mm, amplitude_mm, sigma_mm: float) -> Image:
    """A Gaussian bump of displacement ``amplitude_mm`` (world vector) around ``centre_mm``."""
    points = grid_points_mm(grid, dtype=torch.float64).numpy()
    r2 = ((points - np.asarray(centre_mm)) ** 2).sum(-1)
    field = np.exp(-r2 / (2 * sigma_mm**2))[..., None] * np.asarray(amplitude_mm)
    return Image(field.astype(np.float32), grid)


@pytest.fixture(scope="module")
def transform() -> DeformableTransform:
    grid = _field_grid()
    linear = rigid_from_params(np.array([5.0, -3.0, 8.0]), np.array([4.0, -6.0, 2.0]), grid.center_mm())
    return DeformableTransform(linear, _bump(grid, _voxel_centre(grid), [6.0, -4.0, 3.0], 12.0))


def _voxel_centre(grid: Grid) -> np.ndarray:
    """World position of the voxel nearest the grid centre, ``(d,)``."""
    return grid.index_to_world(grid.size_xyz[None] // 2)[0]


def _probe_points(t: DeformableTransform, n: int = 200) -> np.ndarray:
    """Points inside the field grid (most) and some outside it."""
    rng = np.random.default_rng(0)
    grid = t.field.grid
    inside = grid.index_to_world(rng.uniform(0, grid.size_xyz - 1, size=(n, 3)))
    outside = grid.center_mm() + rng.normal(scale=200.0, size=(20, 3))
    return np.vstack([inside, outside])


def test_apply_is_linear_after_field(transform):
    p = _probe_points(transform)
    field = DeformableTransform(AffineTransform.identity(3), transform.field)
    assert np.allclose(transform.apply(p), transform.linear.apply(field.apply(p)), atol=1e-9)
    centre = _voxel_centre(transform.field.grid)[None]
    assert np.allclose(field.apply(centre) - centre, [[6.0, -4.0, 3.0]], atol=1e-5)
    far = centre + 1000.0
    assert np.allclose(field.apply(far), far)


@pytest.mark.parametrize("suffix", [".h5", ".nii.gz"])
def test_sitk_reads_what_apply_does(transform, tmp_path, suffix):
    path = tmp_path / f"T{suffix}"
    transform.save(path)
    if suffix == ".h5":
        tx = sitk.ReadTransform(str(path))
    else:
        tx = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
    p = _probe_points(transform)[:200]  # the total field holds inside its grid only
    ours = transform.apply(p)
    theirs = np.array([tx.TransformPoint(q.tolist()) for q in p])
    assert np.abs(ours - theirs).max() < 0.01
    back = DeformableTransform.read(path)
    assert np.abs(back.apply(p) - ours).max() < 0.01


def test_h5_order_is_field_first(transform, tmp_path):
    """Swapping the order in the composite would move points differently: the check has teeth."""
    path = tmp_path / "T.h5"
    transform.save(path)
    p = _probe_points(transform)[:50]
    field_last = DeformableTransform(AffineTransform.identity(3), transform.field)
    wrong_order = field_last.apply(transform.linear.apply(p))
    tx = sitk.ReadTransform(str(path))
    theirs = np.array([tx.TransformPoint(q.tolist()) for q in p])
    assert np.abs(theirs - wrong_order).max() > 1.0


def test_sitk_resample_undoes_a_known_warp(t1_2mm, tmp_path):
    """Moving = fixed warped by the inverse-ish deformation: Resample(moving, fixed, T) brings it back."""
    fixed = t1_2mm
    grid = fixed.grid
    centre = grid.center_mm() + np.array([10.0, 0.0, 5.0])
    bump = _bump(grid, centre, [0.0, 6.0, -4.0], 10.0)
    linear = rigid_from_params(np.array([0.0, 0.0, 6.0]), np.array([5.0, 0.0, 0.0]), grid.center_mm())
    t = DeformableTransform(linear, bump)
    # Moving image content at p = fixed at T^-1(p): sample the fixed image through the inverse.
    inverse = _numerical_inverse(t, grid_points_mm(grid, dtype=torch.float64).reshape(-1, 3).numpy())
    moving_values = _sample(fixed, inverse).reshape(fixed.array.shape)
    moving = sitk.GetImageFromArray(moving_values)
    moving.CopyInformation(image_to_sitk(fixed))
    path = tmp_path / "T.h5"
    t.save(path)
    back = sitk.Resample(moving, image_to_sitk(fixed), sitk.ReadTransform(str(path)), sitk.sitkLinear)
    back = sitk.GetArrayFromImage(back)
    near = np.linalg.norm(grid_points_mm(grid, dtype=torch.float64).numpy() - centre, axis=-1) < 15.0
    mask = (fixed.array > 20) & near
    err = np.abs(back - fixed.array)[mask].mean()
    err_linear_only = np.abs(
        sitk.GetArrayFromImage(sitk.Resample(moving, image_to_sitk(fixed), _sitk_affine(linear)))
        - fixed.array
    )[mask].mean()
    assert err < 0.4 * err_linear_only


def _sitk_affine(t: AffineTransform):
    from crossreg.transform import to_sitk

    return to_sitk(t)


def _numerical_inverse(t: DeformableTransform, q: np.ndarray, iterations: int = 8) -> np.ndarray:
    """Fixed points ``x`` with ``t(x) = q`` (fixed-point iteration; the field is small and smooth)."""
    x = t.linear.inverse().apply(q)
    for _ in range(iterations):
        x = x - (t.apply(x) - q) @ np.linalg.inv(t.linear.matrix).T
    return x


def _sample(image: Image, points_mm: np.ndarray) -> np.ndarray:
    from crossreg.resample import sample_world

    vol = torch.from_numpy(image.array).double()[None]
    return sample_world(vol, image.grid, torch.from_numpy(points_mm)).numpy()[0].astype(np.float32)


def test_read_refuses_other_files(tmp_path):
    path = tmp_path / "T.tfm"
    sitk.WriteTransform(sitk.Euler3DTransform(), str(path))
    with pytest.raises(TransformIOError):
        DeformableTransform.read(path)
    with pytest.raises(TransformIOError):
        DeformableTransform(AffineTransform.identity(3), _bump(_field_grid(), [0, 0, 0], [1, 0, 0], 5)).save(
            tmp_path / "T.tfm"
        )


@pytest.mark.skipif(importlib.util.find_spec("ants") is None, reason="ANTsPy is not installed")
def test_ants_applies_the_h5_as_we_do(transform, tmp_path):
    import ants
    import pandas as pd

    path = tmp_path / "T.h5"
    transform.save(path)
    p = _probe_points(transform)[:50]
    # antsApplyTransformsToPoints applies the listed transforms to points as they stand (LPS): the
    # image-resampling transform list maps fixed points to moving points.
    frame = pd.DataFrame(p, columns=["x", "y", "z"])
    mapped = ants.apply_transforms_to_points(3, frame, [str(path)]).to_numpy()
    assert np.abs(mapped - transform.apply(p)).max() < 0.01
