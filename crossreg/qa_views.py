"""What the registration QA figure shows, as arrays: the zoom box, fused slices per stage, the fixed
image's edges, a warped grid and the Jacobian determinant of a deformable field.

A surgeon judges a registration where the images overlap, so the views are cropped to the smaller
field of view (an ultrasound cone, a slab) as it lands in the fixed image, plus a margin, and sliced
through its centre (radiological display, :mod:`crossreg.viz`). Everything is sampled in the fixed
image's world space: moving images through each stage's fixed -> moving transform.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from crossreg.deformable.jacobian import jacobian_determinant
from crossreg.deformation import DeformableTransform, warp_image
from crossreg.errors import DimensionMismatchError
from crossreg.filters import gaussian_blur
from crossreg.image import Grid, Image, axis_aligned_grid, fov_mask, robust_normalize
from crossreg.resample import grid_points_mm, resample
from crossreg.transform import AffineTransform, Transform
from crossreg.viz import Letters, plane_grids

AnyTransform = Transform | DeformableTransform
Stage = tuple[str, AnyTransform]  # (what the row shows, fixed -> moving transform)
ZOOM_PX = 200  # longest side of a zoomed slice
_BOX_GRID_PX = 64  # longest side of the coarse grid the zoom box is found on
_EDGE_SIGMA_MM = 1.0


@dataclass(frozen=True, eq=False)
class ZoomView:
    """One displayed plane of the zoom box, ready for ``imshow`` (row 0 at the top).

    fixed: ``(H, W)`` in [0, 1]; edges: ``(H, W)`` bool, the fixed image's edges; moving: one ``(H, W)``
    slice per stage, in [0, 1], NaN outside the moving field of view. grid: the slice grid (3D: three
    slices thick, the displayed one in the middle); letters: patient directions at the left, right,
    top and bottom edges.
    """

    name: str
    grid: Grid
    letters: Letters
    fixed: np.ndarray
    edges: np.ndarray
    moving: tuple[np.ndarray, ...]

    def project(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel positions ``(N, 2)`` (column, row) of world points ``(N, d)`` and their signed distance
        ``(N,)`` in mm from the displayed plane (0 in 2D)."""
        idx = self.grid.world_to_index(np.asarray(points_mm, float).reshape(-1, self.grid.ndim))
        if self.grid.ndim == 2:
            return idx, np.zeros(len(idx))
        return idx[:, :2], (idx[:, 2] - 1.0) * self.grid.spacing_mm[2]


def zoom_box(fixed: Image, moving: Image, transform: AnyTransform, margin_mm: float = 10.0) -> np.ndarray:
    """``(2, d)`` world corners (low, high) mm of the box around the smaller field of view in fixed
    space: the moving one mapped through ``transform`` (fixed -> moving), or the fixed one; plus
    ``margin_mm``, clipped to the fixed image. The whole fixed field of view where they do not overlap."""
    corners = fixed.grid.corners_mm()
    coarse = axis_aligned_grid(
        corners, max(min(fixed.spacing_mm), np.ptp(corners, axis=0).max() / _BOX_GRID_PX)
    )
    fixed_mask, moving_mask = fov_mask(fixed), fov_mask(moving)
    fixed_fov = _mask_on(fixed, fixed_mask, coarse, None)
    moving_fov = _mask_on(moving, moving_mask, coarse, transform)
    moving_smaller = moving_mask.sum() * np.prod(moving.spacing_mm) < fixed_mask.sum() * np.prod(
        fixed.spacing_mm
    )
    smaller = moving_fov if moving_smaller and moving_fov.any() else fixed_fov
    if not smaller.any():
        return np.stack([corners.min(axis=0), corners.max(axis=0)])
    index_xyz = np.argwhere(smaller)[:, ::-1]
    inside = coarse.index_to_world(np.stack([index_xyz.min(axis=0), index_xyz.max(axis=0)]))
    lo = np.maximum(inside.min(axis=0) - margin_mm, corners.min(axis=0))
    hi = np.minimum(inside.max(axis=0) + margin_mm, corners.max(axis=0))
    return np.stack([lo, hi])


def zoom_views(fixed: Image, moving: Image, stages: list[Stage], box_mm: np.ndarray) -> list[ZoomView]:
    """The planes through the centre of ``box_mm`` ``(2, d)`` covering it (3D: axial, coronal,
    sagittal; 2D: the image), with ``moving`` sampled through each stage's transform."""
    if fixed.ndim != moving.ndim or any(t.ndim != fixed.ndim for _, t in stages):
        raise DimensionMismatchError(
            f"fixed is {fixed.ndim}D, moving {moving.ndim}D, transforms "
            f"{[t.ndim for _, t in stages]}D; they must agree"
        )
    f = robust_normalize(fixed)
    m = robust_normalize(moving)
    m = m.with_array(m.array, m.valid_mask() & fov_mask(moving))
    corners = box_corners(box_mm)
    spacing = max(float(np.ptp(box_mm, axis=0).max()) / ZOOM_PX, min(fixed.spacing_mm) / 4)
    views = []
    for name, grid, letters in plane_grids(corners, box_mm.mean(axis=0), spacing):
        shown = _middle(_sampled(f, grid, None))
        moved = tuple(_middle(_sampled(m, grid, t)) for _, t in stages)
        views.append(ZoomView(name, grid, letters, np.nan_to_num(shown), edges(shown, spacing), moved))
    return views


def box_corners(box_mm: np.ndarray) -> np.ndarray:
    """The ``2**d`` corners ``(2**d, d)`` of a box given by its low and high corners ``(2, d)``."""
    d = box_mm.shape[1]
    pick = np.array(list(itertools.product((0, 1), repeat=d)))
    return box_mm[pick, np.arange(d)]


def edges(slice_: np.ndarray, spacing_mm: float) -> np.ndarray:
    """``(H, W)`` bool edges of a ``(H, W)`` slice (NaN: no data): ridges of its smoothed gradient
    magnitude (kept where it peaks across the edge) in the top 15% of that magnitude."""
    values = torch.from_numpy(np.nan_to_num(slice_).astype(np.float64))[None]
    smooth = gaussian_blur(values, _EDGE_SIGMA_MM / spacing_mm)[0].numpy()
    gy, gx = np.gradient(smooth)
    mag = np.hypot(gx, gy)
    # Non-maximum suppression along the gradient, quantised to the nearest of 4 directions.
    angle = np.round(np.arctan2(gy, gx) / (np.pi / 4)).astype(int) % 4
    steps = np.array([(0, 1), (1, 1), (1, 0), (1, -1)])[angle]  # (row, column) step per pixel
    rows, cols = np.indices(mag.shape)
    h, w = mag.shape
    ahead = mag[np.clip(rows + steps[..., 0], 0, h - 1), np.clip(cols + steps[..., 1], 0, w - 1)]
    behind = mag[np.clip(rows - steps[..., 0], 0, h - 1), np.clip(cols - steps[..., 1], 0, w - 1)]
    data = ~np.isnan(slice_)
    level = np.percentile(mag[data], 85) if data.any() else np.inf
    return (mag >= ahead) & (mag >= behind) & (mag > max(level, 1e-6)) & data


def jacobian_slice(transform: DeformableTransform, grid: Grid) -> np.ndarray:
    """``(H, W)`` Jacobian determinant of the field ``x -> x + d(x)`` (the linear part left out) on the
    displayed slice of ``grid`` (3D: a three-slice grid, central differences across it)."""
    field_only = DeformableTransform(AffineTransform.identity(grid.ndim), transform.field)
    points = grid_points_mm(grid, dtype=torch.float64)
    u_world = field_only.apply_tensor(points) - points
    # Components along the grid's index axes, in voxels: what jacobian_determinant takes.
    direction = torch.as_tensor(np.asarray(grid.direction, float))
    u_index = (u_world @ direction) / torch.as_tensor(grid.spacing_mm, dtype=torch.float64)
    det = jacobian_determinant(torch.movedim(u_index, -1, 0)).numpy()
    return _middle(det)


def warped_grid_lines(transform: DeformableTransform, grid: Grid, step_mm: float) -> list[np.ndarray]:
    """Lines of a regular grid ``step_mm`` apart on the displayed slice of ``grid``, each moved by the
    field (``x -> x + d(x)``, the linear part left out) and projected back onto the slice: a list of
    ``(K, 2)`` pixel (column, row) polylines."""
    field_only = DeformableTransform(AffineTransform.identity(grid.ndim), transform.field)
    size = grid.size_xyz[:2].astype(float)
    step_px = step_mm / grid.spacing_mm[0]
    ticks = [np.arange(0.0, n - 0.5, step_px) for n in size]
    dense = [np.linspace(0.0, n - 1.0, int(n)) for n in size]
    lines = [np.column_stack([np.full_like(dense[1], u), dense[1]]) for u in ticks[0]]
    lines += [np.column_stack([dense[0], np.full_like(dense[0], v)]) for v in ticks[1]]
    plane = [] if grid.ndim == 2 else [1.0]
    index = np.concatenate([np.column_stack([x, np.full((len(x), len(plane)), plane)]) for x in lines])
    moved = grid.world_to_index(field_only.apply(grid.index_to_world(index)))[:, :2]
    return np.split(moved, np.cumsum([len(line) for line in lines])[:-1])


def _sampled(image: Image, grid: Grid, transform: AnyTransform | None) -> np.ndarray:
    """``image`` on ``grid`` through ``transform`` (fixed -> image), NaN outside the image's mask."""
    if isinstance(transform, DeformableTransform):
        out = warp_image(image, grid, transform)
    else:
        out = resample(image, grid, transform)
    return np.where(out.valid_mask(), out.array, np.nan)


def _middle(volume: np.ndarray) -> np.ndarray:
    """The displayed ``(H, W)`` slice of a slice-grid array (3D: the middle of three)."""
    return volume[1] if volume.ndim == 3 else volume


def _mask_on(image: Image, mask: np.ndarray, grid: Grid, transform: AnyTransform | None) -> np.ndarray:
    """``mask`` of ``image`` on ``grid`` through ``transform`` (fixed -> image): bool ``grid.shape``."""
    values = _sampled(image.with_array(mask.astype(np.float32)), grid, transform)
    return np.nan_to_num(values) > 0.5
