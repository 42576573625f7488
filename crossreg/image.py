"""Images that carry their physical space: an array plus spacing, origin and direction cosines.

Conventions (the same as ITK/SimpleITK):
- ``Image.array`` is stored in SimpleITK's numpy order, ``(z, y, x)`` in 3D and ``(y, x)`` in 2D.
- ``spacing_mm``, ``origin_mm`` and continuous indices ``index_xyz`` are in ITK order ``(x, y, z)``.
- ``direction`` is a ``(d, d)`` matrix whose columns are the world directions of the index axes.
- World points are in millimetres, LPS: ``point = origin + direction @ (spacing * index_xyz)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crossreg.errors import InvalidImageError

if TYPE_CHECKING:
    import torch

MIN_SIZE = 8  # voxels per axis; below this no keypoint neighbourhood fits
MIN_SIGNAL_VOXELS = 64  # voxels that differ from the background (median) value


@dataclass(frozen=True, eq=False)
class Grid:
    """A sampling grid in world space: array shape plus ITK geometry."""

    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    origin_mm: tuple[float, ...]
    direction: np.ndarray

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size_xyz(self) -> np.ndarray:
        """Number of voxels per axis, ITK order ``(x, y, z)``."""
        return np.array(self.shape[::-1], dtype=np.int64)

    def index_to_world_matrix(self) -> np.ndarray:
        """Homogeneous ``(d+1, d+1)`` matrix taking ``index_xyz`` to world mm."""
        d = self.ndim
        m = np.eye(d + 1)
        m[:d, :d] = np.asarray(self.direction, float) @ np.diag(self.spacing_mm)
        m[:d, d] = self.origin_mm
        return m

    def index_to_world(self, index_xyz: np.ndarray) -> np.ndarray:
        """World points ``(N, d)`` mm for continuous indices ``(N, d)`` in ``(x, y, z)`` order."""
        m = self.index_to_world_matrix()
        return np.asarray(index_xyz, float) @ m[:-1, :-1].T + m[:-1, -1]

    def world_to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """Continuous indices ``(N, d)`` in ``(x, y, z)`` order for world points ``(N, d)`` mm."""
        m = np.linalg.inv(self.index_to_world_matrix())
        return np.asarray(points_mm, float) @ m[:-1, :-1].T + m[:-1, -1]

    def corners_mm(self) -> np.ndarray:
        """The ``2**d`` corner voxel centres in world mm, ``(2**d, d)``."""
        d = self.ndim
        bits = np.array(np.meshgrid(*[[0, 1]] * d, indexing="ij")).reshape(d, -1).T
        return self.index_to_world(bits * (self.size_xyz - 1))

    def center_mm(self) -> np.ndarray:
        """World position of the grid centre, ``(d,)``."""
        return self.index_to_world((self.size_xyz[None] - 1) / 2.0)[0]

    def contains(self, points_mm: np.ndarray, margin_vox: float = 0.0) -> np.ndarray:
        """Boolean ``(N,)``: which world points fall inside the grid (voxel centres' hull)."""
        idx = self.world_to_index(points_mm)
        return np.all((idx >= -margin_vox) & (idx <= self.size_xyz - 1 + margin_vox), axis=1)


def axis_aligned_grid(corners_mm: np.ndarray, spacing_mm: float) -> Grid:
    """An isotropic grid with identity direction covering the given world points ``(N, d)``."""
    lo, hi = corners_mm.min(axis=0), corners_mm.max(axis=0)
    size_xyz = np.maximum(np.ceil((hi - lo) / spacing_mm).astype(int) + 1, 1)
    d = corners_mm.shape[1]
    return Grid(
        shape=tuple(int(s) for s in size_xyz[::-1]),
        spacing_mm=(float(spacing_mm),) * d,
        origin_mm=tuple(float(v) for v in lo),
        direction=np.eye(d),
    )


@dataclass(frozen=True, eq=False)
class Image:
    """An intensity array with its physical grid and an optional mask of voxels that hold data.

    array: ``(z, y, x)`` or ``(y, x)`` float32. mask: same shape, bool, or ``None`` for all valid.
    """

    array: np.ndarray
    grid: Grid
    mask: np.ndarray | None = None
    source: str = ""

    @property
    def ndim(self) -> int:
        return self.grid.ndim

    @property
    def spacing_mm(self) -> tuple[float, ...]:
        return self.grid.spacing_mm

    @property
    def origin_mm(self) -> tuple[float, ...]:
        return self.grid.origin_mm

    @property
    def direction(self) -> np.ndarray:
        return self.grid.direction

    def valid_mask(self) -> np.ndarray:
        """Boolean array: voxels that hold data (all, if no mask was set)."""
        return np.ones(self.array.shape, bool) if self.mask is None else self.mask

    def summary(self) -> str:
        """One line: source, size and spacing."""
        size = "x".join(str(s) for s in self.grid.size_xyz)
        spacing = "x".join(f"{s:.3g}" for s in self.spacing_mm)
        return f"{Path(self.source).name or 'image'}: {size} voxels, {spacing} mm"

    def with_array(self, array: np.ndarray, mask: np.ndarray | None = None) -> Image:
        """The same grid with new voxel values (and mask)."""
        return replace(self, array=np.asarray(array, np.float32), mask=mask)


def from_array(
    array: np.ndarray,
    spacing_mm: tuple[float, ...] | None = None,
    origin_mm: tuple[float, ...] | None = None,
    direction: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    source: str = "",
) -> Image:
    """An Image from a numpy array in ``(z, y, x)`` / ``(y, x)`` order and ITK-order geometry."""
    arr = np.asarray(array, dtype=np.float32)
    d = arr.ndim
    grid = Grid(
        shape=arr.shape,
        spacing_mm=tuple(float(s) for s in (spacing_mm or (1.0,) * d)),
        origin_mm=tuple(float(o) for o in (origin_mm or (0.0,) * d)),
        direction=np.eye(d) if direction is None else np.asarray(direction, float).reshape(d, d),
    )
    image = Image(arr, grid, mask, source)
    validate(image)
    return image


def validate(image: Image) -> None:
    """Raise InvalidImageError if the image cannot be registered."""
    name = image.source or "image"
    arr, grid = image.array, image.grid
    if arr.ndim not in (2, 3):
        raise InvalidImageError(f"{name}: {arr.ndim}D image; crossreg registers 2D or 3D images")
    if min(arr.shape) < MIN_SIZE:
        raise InvalidImageError(
            f"{name}: size {'x'.join(str(int(n)) for n in grid.size_xyz)} voxels; "
            f"each axis needs at least {MIN_SIZE}"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InvalidImageError(f"{name}: {bad} NaN/Inf voxels; replace them before registering")
    if float(arr.max()) == float(arr.min()):
        raise InvalidImageError(f"{name}: constant image (every voxel is {arr.flat[0]:g})")
    if np.count_nonzero(arr != np.median(arr)) < MIN_SIGNAL_VOXELS:
        raise InvalidImageError(f"{name}: empty image (fewer than {MIN_SIGNAL_VOXELS} voxels hold signal)")
    sp = np.asarray(grid.spacing_mm)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0) or np.any(sp > 1e3) or np.any(sp < 1e-3):
        raise InvalidImageError(
            f"{name}: spacing {tuple(float(v) for v in sp)} mm is not physical (each axis needs 0.001 to "
            "1000 mm); fix the voxel size in the header"
        )
    dirn = np.asarray(grid.direction, float)
    if not np.allclose(dirn.T @ dirn, np.eye(arr.ndim), atol=1e-3):
        raise InvalidImageError(
            f"{name}: direction matrix is not orthonormal (sheared or scaled axes); resample it onto an "
            "unsheared grid before registering"
        )


def robust_normalize(image: Image, low_pct: float = 0.5, high_pct: float = 99.5) -> Image:
    """Intensities mapped to [0, 1] by percentiles of the valid voxels (clipped)."""
    import torch

    x = torch.from_numpy(np.asarray(image.array, np.float64))  # numpy's arithmetic, as it always was
    scaled = robust_normalize_tensor(x, torch.from_numpy(image.valid_mask()), low_pct, high_pct)
    return image.with_array(scaled.numpy(), image.mask)


def robust_normalize_tensor(
    x: torch.Tensor, valid: torch.Tensor, low_pct: float = 0.5, high_pct: float = 99.5
) -> torch.Tensor:
    """:func:`robust_normalize` of an array ``x`` and its bool ``valid`` mask, on their device."""
    values = x[valid]
    lo, hi = _percentiles(values, (low_pct, high_pct)) if values.numel() else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return ((x - lo) / max(hi - lo, 1e-12)).clamp(0.0, 1.0)


def _percentiles(values: torch.Tensor, percents: tuple[float, ...]) -> list:
    """Linear-interpolated percentiles of a 1D tensor: numpy's (scalars of its dtype, any size) on a
    CPU, torch's on a GPU."""
    import torch

    if values.device.type == "cpu":
        return list(np.percentile(values.numpy(), percents))
    q = torch.tensor(percents, dtype=values.dtype, device=values.device) / 100.0
    return torch.quantile(values, q).tolist()


def data_mask(image: Image) -> np.ndarray:
    """Boolean array: the voxels of an image without a mask of its own (as read from a file) that hold
    data: all but the padding, i.e. those at the image's minimum value (a scanner fills the box around
    an ultrasound cone or a CT's circle with it), and their neighbours, which mix data and padding when
    resampled."""
    import torch

    from crossreg.filters import dilate

    padding = torch.from_numpy(np.asarray(image.array == image.array.min()))
    return ~dilate(padding, 1).numpy()


def fov_mask(image: Image, threshold: float = 0.02, smooth_mm: float = 2.0) -> np.ndarray:
    """Boolean array: voxels inside the field of view, i.e. where the image has signal.

    Signal is the smoothed absolute intensity above ``threshold`` times its 99th percentile; this
    removes the zero padding around partial-coverage images (an ultrasound cone, a cropped slab) and
    the air around a head, so keypoints are only sought where there is something to see.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image.array, np.float32))
    valid = torch.from_numpy(image.valid_mask())
    return fov_mask_tensor(x, valid, image.spacing_mm, threshold, smooth_mm).numpy()


def fov_mask_tensor(
    x: torch.Tensor,
    valid: torch.Tensor,
    spacing_mm: tuple[float, ...],
    threshold: float = 0.02,
    smooth_mm: float = 2.0,
) -> torch.Tensor:
    """:func:`fov_mask` of a float32 array ``x`` (voxels ``spacing_mm``, ITK order) and its bool
    ``valid`` mask, on their device."""
    from crossreg.filters import gaussian_blur

    smooth = gaussian_blur(x.abs()[None], tuple(smooth_mm / s for s in spacing_mm[::-1]))[0]
    ref = _percentiles(smooth[valid], (99.0,))[0] if bool(valid.any()) else 0.0
    return valid & (smooth > threshold * ref)


def crop_to_mask(image: Image, margin_vox: int = 0) -> Image:
    """``image`` on the smallest sub-grid holding its mask plus ``margin_vox``, in the same world place.

    A partial field of view (an ultrasound cone, a slab) is acquired on a grid that covers only it, so
    the grid centre tells nothing about where the anatomy is. Images without a mask come back as they are.
    """
    found = np.argwhere(image.valid_mask()) if image.mask is not None else np.empty((0, image.ndim))
    if found.size == 0:
        return image
    lo = np.maximum(found.min(axis=0) - margin_vox, 0)
    hi = np.minimum(found.max(axis=0) + margin_vox + 1, image.array.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    origin = image.grid.index_to_world(lo[::-1][None].astype(float))[0]
    grid = Grid(
        tuple(int(n) for n in hi - lo), image.spacing_mm, tuple(float(o) for o in origin), image.direction
    )
    return Image(image.array[box].copy(), grid, image.mask[box].copy(), image.source)
