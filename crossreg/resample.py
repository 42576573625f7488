"""Resampling an image onto another grid through a world-space transform, in torch.

One affine chain does all of it: target index -> world -> transform -> source world -> source index,
folded into the normalised ``theta`` that ``torch.nn.functional.affine_grid`` takes. The same code is
differentiable in the transform, which is what intensity refinement optimises. A homography makes the
chain projective: its last row then divides the coordinates affine_grid gives.
"""

from __future__ import annotations

import warnings
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F

from crossreg.image import Grid, Image, axis_aligned_grid, data_mask, fov_mask, robust_normalize
from crossreg.transform import AffineTransform, Transform


def grid_points_mm(
    grid: Grid, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """World positions of every voxel centre, ``(*grid.shape, d)`` in ``dtype`` (computed in float64)."""
    axes = [torch.arange(n, dtype=torch.float64, device=device) for n in grid.shape]
    index_xyz = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)
    m = torch.as_tensor(grid.index_to_world_matrix(), dtype=torch.float64, device=device)
    return (index_xyz @ m[:-1, :-1].T + m[:-1, -1]).to(dtype)


def _normalizer(grid: Grid) -> np.ndarray:
    """Homogeneous matrix taking ``index_xyz`` to grid_sample's [-1, 1] coordinates (align_corners)."""
    d = grid.ndim
    n = np.eye(d + 1)
    size = grid.size_xyz.astype(float)
    n[:d, :d] = np.diag(2.0 / np.maximum(size - 1, 1))
    # affine_grid puts a one-voxel axis at 0, not at -1.
    n[:d, d] = np.where(size > 1, -1.0, 0.0)
    return n


def sampling_theta(target: Grid, source: Grid, transform_h: torch.Tensor) -> torch.Tensor:
    """``(d, d+1)`` theta for affine_grid: target normalised coords -> source normalised coords.

    transform_h: ``(d+1, d+1)`` homogeneous world transform (target world -> source world), any dtype;
    gradients flow through it.
    """
    return sampling_matrix(target, source, transform_h)[:-1]


def sampling_matrix(target: Grid, source: Grid, transform_h: torch.Tensor) -> torch.Tensor:
    """``(d+1, d+1)`` homogeneous map of target normalised coords to source normalised coords; its last
    row is ``(0, ..., 0, 1)`` unless ``transform_h`` is projective (a homography)."""
    dt, dev = transform_h.dtype, transform_h.device
    left = torch.as_tensor(
        _normalizer(source) @ np.linalg.inv(source.index_to_world_matrix()), dtype=dt, device=dev
    )
    right = torch.as_tensor(
        target.index_to_world_matrix() @ np.linalg.inv(_normalizer(target)), dtype=dt, device=dev
    )
    return left @ transform_h @ right


def sample_tensor(
    volume: torch.Tensor, target: Grid, source: Grid, transform_h: torch.Tensor, mode: str = "bilinear"
) -> torch.Tensor:
    """Sample ``volume`` ``(C, *source.shape)`` on ``target``; gives ``(C, *target.shape)``, zeros outside.

    transform_h: ``(d+1, d+1)`` homogeneous target world -> source world transform, affine or projective.
    """
    m = sampling_matrix(target, source, transform_h).to(volume.dtype)
    size = [1, volume.shape[0], *target.shape]
    with warnings.catch_warnings():
        # Unit-size axes are handled by _normalizer (placed at 0, as affine_grid does).
        warnings.filterwarnings("ignore", message=".*unit-size grids.*")
        coords = F.affine_grid(m[None, :-1], size, align_corners=True)
        if not torch.equal(transform_h[-1].to(m), torch.eye(len(m), dtype=m.dtype, device=m.device)[-1]):
            identity = torch.eye(len(m), dtype=m.dtype, device=m.device)[None, :-1]
            w = F.affine_grid(identity, size, align_corners=True) @ m[-1, :-1] + m[-1, -1]
            # Points beyond the horizon (w <= 0) have no image: send them outside the source.
            coords = torch.where(w[..., None] > 0, coords / w[..., None], 2.0)
    return F.grid_sample(volume[None], coords, mode=mode, padding_mode="zeros", align_corners=True)[0]


def resample(image: Image, target: Grid, transform: Transform | None = None, mode: str = "bilinear") -> Image:
    """``image`` sampled on ``target``; ``transform`` maps target world points to ``image`` world points.

    The result's mask marks target voxels that fall inside the image (and inside its mask).
    """
    t = transform or AffineTransform.identity(image.ndim)
    th = torch.as_tensor(t.homogeneous(), dtype=torch.float64)
    valid = torch.from_numpy(image.valid_mask().astype(np.float32))
    stacked = torch.stack([torch.from_numpy(np.ascontiguousarray(image.array, np.float32)), valid])
    with torch.no_grad():
        values = sample_tensor(stacked[:1], target, image.grid, th, mode)[0]
        inside = sample_tensor(stacked[1:], target, image.grid, th, "bilinear")[0] > 0.999
    return Image(values.numpy(), target, inside.numpy(), image.source)


def to_working_grid(image: Image, spacing_mm: float) -> Image:
    """``image`` on an isotropic, axis-aligned (identity direction) grid covering it.

    Working grids make every voxel operation (filters, neighbourhoods, patches) world-aligned, so
    flipped axes, oblique directions and anisotropic voxels all give the same features.
    """
    grid = axis_aligned_grid(image.grid.corners_mm(), spacing_mm)
    return resample(image, grid)


def on_grid(image: Image, grid: Grid) -> np.ndarray:
    """``image``'s array sampled (linearly, zero outside) at the voxel centres of ``grid``; the array
    itself when the grids agree."""
    a = image.grid
    if a.shape == grid.shape and np.allclose(a.index_to_world_matrix(), grid.index_to_world_matrix()):
        return image.array
    return resample(image, grid).array


def sample_world(volume: torch.Tensor, grid: Grid, points_mm: torch.Tensor) -> torch.Tensor:
    """``volume`` ``(C, *grid.shape)`` linearly interpolated at world points ``(*P, d)``: ``(C, *P)``,
    zero outside the grid."""
    to_index = np.linalg.inv(grid.index_to_world_matrix())
    scale = 2.0 / np.maximum(grid.size_xyz - 1, 1)
    m = torch.as_tensor(scale[:, None] * to_index[:-1, :-1], dtype=points_mm.dtype, device=points_mm.device)
    b = torch.as_tensor(scale * to_index[:-1, -1] - 1.0, dtype=points_mm.dtype, device=points_mm.device)
    coords = points_mm @ m.T + b
    flat = coords.reshape(1, -1, *([1] * (grid.ndim - 1)), grid.ndim)
    out = F.grid_sample(volume[None].to(coords), flat, align_corners=True, padding_mode="zeros")
    return out.reshape(volume.shape[0], *points_mm.shape[:-1])


def working_image(image: Image, spacing_mm: float) -> Image:
    """``image`` normalised and on the isotropic world-aligned grid features are computed on, its mask
    the field of view (where there is signal, :func:`crossreg.image.data_mask` of an image without a
    mask): what both MIND and CrossKEY descriptors read."""
    normal = robust_normalize(image)  # intensities scaled over the whole image, padding included
    work = to_working_grid(normal.with_array(normal.array, data_mask(image)), spacing_mm)
    return work.with_array(work.array, work.valid_mask() & fov_mask(work))


@overload
def grid_coords(grid: Grid, points_mm: np.ndarray) -> np.ndarray: ...
@overload
def grid_coords(grid: Grid, points_mm: torch.Tensor) -> torch.Tensor: ...
def grid_coords(grid: Grid, points_mm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """grid_sample coordinates ``(N, d)`` (x, y, z; -1..1 at the corner voxel centres) of world points
    ``(N, d)``: numpy in, numpy out; a tensor in, a float64 tensor on its device out (descriptors read
    at millions of points: numpy's small matrix products would take seconds)."""
    if isinstance(points_mm, np.ndarray):
        index_xyz = grid.world_to_index(points_mm)
        return 2.0 * index_xyz / np.maximum(grid.size_xyz - 1, 1) - 1.0
    size = torch.as_tensor(np.maximum(grid.size_xyz - 1, 1), dtype=torch.float64, device=points_mm.device)
    return 2.0 * grid_index(grid, points_mm) / size - 1.0


def grid_index(grid: Grid, points_mm: torch.Tensor) -> torch.Tensor:
    """Continuous indices ``(N, d)`` (x, y, z order), float64 on the points' device, of world points
    ``(N, d)``: :meth:`crossreg.image.Grid.world_to_index` in torch."""
    to_index = torch.as_tensor(np.linalg.inv(grid.index_to_world_matrix()), device=points_mm.device)
    return points_mm.double() @ to_index[:-1, :-1].T + to_index[:-1, -1]
