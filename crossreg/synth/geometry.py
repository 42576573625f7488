"""Ground-truth geometry for synthetic cases, in world millimetres (LPS): exact random rigid and affine
motions, moving an image by a known transform, partial fields of view, re-gridding, slices, landmarks.

Motion follows crossreg's convention: a transform ``T`` maps fixed points to moving points, and
:func:`move` puts the content found at fixed point ``p`` at moving point ``T(p)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from crossreg.errors import EmptyRegionError, InvalidImageError
from crossreg.filters import erode, gaussian_blur
from crossreg.image import Grid, Image, fov_mask, from_array
from crossreg.resample import resample
from crossreg.transform import AffineTransform, Transform, compose

Axis = Literal["axial", "coronal", "sagittal"]
_WORLD_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # LPS: x, y, z
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _unit_vector(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A direction drawn uniformly on the unit sphere, ``(ndim,)``."""
    v = rng.standard_normal(ndim)
    return v / np.linalg.norm(v)


def rotation_about_axis(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """``(3, 3)`` rotation by ``angle_rad`` about the unit vector ``axis`` ``(3,)`` (Rodrigues)."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1.0 - np.cos(angle_rad)) * (k @ k)


def random_rigid(
    ndim: int,
    angle_deg: float,
    translation_mm: float,
    center_mm: np.ndarray | None = None,
    seed: int = 0,
) -> AffineTransform:
    """A rigid transform rotating by exactly ``angle_deg`` and shifting by exactly ``translation_mm``.

    The rotation is about a random axis through ``center_mm`` ``(d,)`` (the origin if None); in 2D it
    is about the one axis, with a random sign. ``center_mm`` moves by ``translation_mm`` along a random
    direction, so ``|T(center) - center| == translation_mm`` and ``T.rotation_deg() == angle_deg``.
    """
    if ndim not in (2, 3):
        raise ValueError(f"random_rigid: ndim must be 2 or 3, got {ndim}")
    rng = np.random.default_rng(seed)
    a = np.radians(angle_deg)
    if ndim == 2:
        a *= rng.choice([-1.0, 1.0])
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    else:
        r = rotation_about_axis(_unit_vector(rng, 3), a)
    c = np.zeros(ndim) if center_mm is None else np.asarray(center_mm, float)
    t = translation_mm * _unit_vector(rng, ndim)
    return AffineTransform(r, c - r @ c + t, "rigid")


def random_affine(
    ndim: int,
    angle_deg: float,
    translation_mm: float,
    max_scale: float = 0.1,
    max_shear: float = 0.05,
    center_mm: np.ndarray | None = None,
    seed: int = 0,
) -> AffineTransform:
    """:func:`random_rigid` composed with a random scaling (each axis by ``1 +- max_scale``) and shear
    (off-diagonal terms up to ``max_shear``), both about ``center_mm``: head-size and shape changes."""
    rng = np.random.default_rng(seed)
    rigid = random_rigid(ndim, angle_deg, translation_mm, center_mm, int(rng.integers(2**31)))
    strain = np.diag(1.0 + rng.uniform(-max_scale, max_scale, ndim))
    strain += np.triu(rng.uniform(-max_shear, max_shear, (ndim, ndim)), k=1)
    c = np.zeros(ndim) if center_mm is None else np.asarray(center_mm, float)
    return compose(AffineTransform(strain, c - strain @ c, "affine"), rigid)


def covering_grid(
    points_mm: np.ndarray, spacing_mm: tuple[float, ...], direction: np.ndarray | None = None
) -> Grid:
    """The smallest grid with ``spacing_mm`` (ITK order) and ``direction`` covering ``points_mm`` (N, d).

    The grid is centred on the bounding box of the points in its own axes, so re-gridding keeps the
    physical centre; a grid's own corners give back that grid.
    """
    pts = np.asarray(points_mm, float)
    d = pts.shape[1]
    dirn = np.eye(d) if direction is None else np.asarray(direction, float)
    sp = np.broadcast_to(np.asarray(spacing_mm, float), (d,))
    local = pts @ dirn  # coordinates along the grid axes (direction is orthonormal)
    lo, hi = local.min(axis=0), local.max(axis=0)
    size = np.maximum(np.ceil((hi - lo) / sp - 1e-6).astype(int) + 1, 1)
    origin_local = (lo + hi) / 2 - sp * (size - 1) / 2
    return Grid(
        shape=tuple(int(s) for s in size[::-1]),
        spacing_mm=tuple(float(s) for s in sp),
        origin_mm=tuple(float(o) for o in dirn @ origin_local),
        direction=dirn,
    )


def move(image: Image, transform: Transform, spacing_mm: tuple[float, ...] | None = None) -> Image:
    """``image`` moved by ``transform``: what it shows at point ``p`` appears at ``transform(p)``.

    The result keeps the image's direction, lies on a grid covering the moved image, and is sampled
    at ``spacing_mm`` (the image's spacing if None; coarser spacing is anti-aliased, see
    :func:`resample_anisotropic`).
    """
    grid = covering_grid(transform.apply(image.grid.corners_mm()), image.spacing_mm, image.direction)
    moved = resample(image, grid, transform.inverse())
    return moved if spacing_mm is None else resample_anisotropic(moved, spacing_mm)


def pad(image: Image, margin_mm: float) -> Image:
    """``image`` on a grid enlarged by at least ``margin_mm`` on every side, filled with zeros.

    The mask, if any, is False in the added border; without one the zeros count as data.
    """
    n_xyz = np.ceil(margin_mm / np.asarray(image.spacing_mm)).astype(int)
    widths = [(int(n), int(n)) for n in n_xyz[::-1]]
    m = image.grid.index_to_world_matrix()
    origin = m[:-1, -1] - m[:-1, :-1] @ n_xyz
    mask = None if image.mask is None else np.pad(image.mask, widths)
    arr = np.pad(image.array, widths)
    grid = Grid(arr.shape, image.spacing_mm, tuple(float(o) for o in origin), image.direction)
    return Image(arr, grid, mask, image.source)


def resample_anisotropic(
    image: Image, spacing_mm: tuple[float, ...], direction: np.ndarray | None = None, antialias: bool = True
) -> Image:
    """``image`` re-gridded at ``spacing_mm`` (ITK order), keeping its physical extent and centre.

    direction: ``(d, d)`` orthonormal, e.g. ``random_rigid(3, 10, 0).matrix @ image.direction`` for an
    oblique acquisition; the image's own if None. With ``antialias`` the image is first smoothed so each
    new voxel integrates a Gaussian slice profile whose FWHM is its spacing (in the image's own axes:
    exact for axis-aligned grids, the diagonal of the covariance for oblique ones).
    """
    dirn = image.direction if direction is None else np.asarray(direction, float)
    grid = covering_grid(image.grid.corners_mm(), spacing_mm, dirn)
    if antialias:
        rot2 = (np.asarray(image.direction).T @ dirn) ** 2  # (source axis, target axis)
        src_sp = np.asarray(image.spacing_mm)
        src_along_target = np.sqrt(rot2.T @ src_sp**2)
        extra = np.sqrt(np.maximum(np.asarray(grid.spacing_mm) ** 2 - src_along_target**2, 0.0))
        sigma_src_mm = np.sqrt(rot2 @ (extra / _FWHM_PER_SIGMA) ** 2)
        x = torch.from_numpy(np.ascontiguousarray(image.array, np.float32))[None]
        smooth = gaussian_blur(x, tuple((sigma_src_mm / src_sp)[::-1]))[0].numpy()
        image = image.with_array(smooth, image.mask)
    return resample(image, grid)


@dataclass(frozen=True, eq=False)
class Slab:
    """The world region ``lo_mm <= normal . p <= hi_mm``: a partial field of view.

    normal: ``(d,)`` unit vector in world mm.
    """

    normal: np.ndarray
    lo_mm: float
    hi_mm: float

    def contains(self, points_mm: np.ndarray) -> np.ndarray:
        """Boolean ``(N,)``: which world points ``(N, d)`` lie in the slab."""
        proj = np.asarray(points_mm, float) @ self.normal
        return (proj >= self.lo_mm) & (proj <= self.hi_mm)

    def mask(self, grid: Grid) -> np.ndarray:
        """Boolean array of ``grid.shape``: voxels whose centres lie in the slab."""
        proj = _projection(grid, self.normal)
        return (proj >= self.lo_mm) & (proj <= self.hi_mm)


def _projection(grid: Grid, normal: np.ndarray) -> np.ndarray:
    """``normal . p`` for every voxel centre ``p`` of ``grid``, an array of ``grid.shape``."""
    m = grid.index_to_world_matrix()
    coef = normal @ m[:-1, :-1]  # per index axis (x, y, z)
    proj = np.full(grid.shape, float(normal @ m[:-1, -1]))
    for k, n in enumerate(grid.size_xyz):
        shape = [1] * grid.ndim
        shape[grid.ndim - 1 - k] = int(n)
        proj = proj + coef[k] * np.arange(n).reshape(shape)
    return proj


def random_slab(image: Image, fraction: float, seed: int = 0, normal: np.ndarray | None = None) -> Slab:
    """A slab holding ``fraction`` of the image's signal voxels (:func:`fov_mask`) at a random position.

    normal: ``(d,)`` world direction across the slab; random if None.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"random_slab: fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    n = (
        _unit_vector(rng, image.ndim)
        if normal is None
        else np.asarray(normal, float) / np.linalg.norm(normal)
    )
    proj = _projection(image.grid, n)[fov_mask(image)]
    q0 = rng.uniform(0.0, 1.0 - fraction)
    lo, hi = np.quantile(proj, [q0, q0 + fraction])
    return Slab(n, float(lo), float(hi))


def apply_slab(image: Image, slab: Slab) -> Image:
    """``image`` with zeros outside ``slab`` and its mask False there."""
    keep = slab.mask(image.grid)
    return image.with_array(np.where(keep, image.array, 0.0), image.valid_mask() & keep)


def fov_crop(image: Image, fraction: float, seed: int = 0, normal: np.ndarray | None = None) -> Image:
    """``image`` cut to a random slab holding ``fraction`` of its signal (zero and unmasked outside)."""
    return apply_slab(image, random_slab(image, fraction, seed, normal))


def extract_slice(volume: Image, axis: Axis = "axial", index: int | None = None) -> Image:
    """The 2D image of one slice of a 3D ``volume``, in the world plane it lies in.

    axis: the world axis normal to the slice (LPS: axial z, coronal y, sagittal x); the index axis most
    aligned with it is cut at ``index`` (the middle if None). The 2D world coordinates are the two
    remaining world coordinates (e.g. x, y for axial), so the 2D image keeps spacing and position.
    """
    dirn = np.asarray(volume.direction, float)
    world = _WORLD_AXIS[axis]
    cut = int(np.argmax(np.abs(dirn[world])))
    keep_idx = [k for k in range(3) if k != cut]
    keep_world = [w for w in range(3) if w != world]
    sub = dirn[np.ix_(keep_world, keep_idx)]
    if not np.allclose(sub.T @ sub, np.eye(2), atol=1e-3):
        raise InvalidImageError(
            f"{volume.source or 'volume'}: its {axis} slices are oblique to the world axes; "
            "re-grid it first (resample_anisotropic with an axis-aligned direction)"
        )
    n = int(volume.grid.size_xyz[cut])
    k = n // 2 if index is None else int(index)
    if not 0 <= k < n:
        raise ValueError(f"extract_slice: index {k} outside 0..{n - 1} along the {axis} axis")
    at = np.zeros((1, 3))
    at[0, cut] = k
    origin = volume.grid.index_to_world(at)[0][keep_world]
    mask = None if volume.mask is None else np.take(volume.mask, k, axis=2 - cut)
    return from_array(
        np.take(volume.array, k, axis=2 - cut),
        spacing_mm=tuple(np.asarray(volume.spacing_mm)[keep_idx]),
        origin_mm=tuple(origin),
        direction=sub,
        mask=mask,
        source=f"{volume.source}[{axis} {k}]",
    )


def sample_landmarks(
    image: Image, n: int, seed: int = 0, mask: np.ndarray | None = None, at_most: bool = False
) -> np.ndarray:
    """``(n, d)`` distinct random world points (mm) inside ``mask`` (the image's signal if None).

    The mask is eroded by one voxel and each point jittered within its voxel, so points are off the
    voxel centres yet inside the mask. With ``at_most``, a mask with fewer voxels gives that many points
    (at least one); else it raises EmptyRegionError.
    """
    region = fov_mask(image) if mask is None else np.asarray(mask, bool)
    region = erode(torch.from_numpy(region & image.valid_mask()), 1).numpy()
    candidates = np.flatnonzero(region)
    if at_most and candidates.size > 0:
        n = min(n, candidates.size)
    if candidates.size < n:
        raise EmptyRegionError(f"only {candidates.size} voxels inside the landmark mask; {n} landmarks asked")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, size=n, replace=False)
    idx_xyz = np.stack(np.unravel_index(chosen, region.shape), axis=1)[:, ::-1]
    return image.grid.index_to_world(idx_xyz + rng.uniform(-0.5, 0.5, idx_xyz.shape))


def salient_landmarks(image: Image, n: int, spacing_mm: float = 10.0) -> np.ndarray:
    """``(n, d)`` world points (mm) at the image's most salient blobs and corners inside its field of
    view (:func:`crossreg.keypoints.detect_keypoints`, at least ``spacing_mm`` apart, 6 mm inside):
    points an observer could click again, spread over the anatomy. Fewer where fewer are found."""
    from crossreg.keypoints import KeypointConfig, detect_keypoints

    config = KeypointConfig(
        nms_radius_mm=spacing_mm, border_mm=6.0, max_keypoints=n, min_keypoints=0, sampling="top"
    )
    return detect_keypoints(image, config).points_mm.double().numpy()
