"""Intensity-based refinement of a linear fixed->moving transform on the overlap of two images.

The transform keeps crossreg's convention (it maps fixed points to moving points). Refinement composes
a correction ``D`` acting in fixed space with the initial transform, ``T = initial ∘ D``, and optimises
``D`` over a spacing pyramid. At each level both images go to isotropic, axis-aligned working grids;
the fixed descriptor (dense MIND-SSC, or intensity for mutual information) is taken at the fixed
field-of-view voxels, and the moving one is sampled at ``T`` of them. Only the overlap counts: fixed
FOV voxels whose image under ``T`` falls in the moving FOV, so zero padding around partial coverage
(an ultrasound cone, a cropped slab) never enters the metric.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from crossreg.errors import DimensionMismatchError, NoOverlapError
from crossreg.features.mind import mind_ssc
from crossreg.filters import erode, gaussian_blur
from crossreg.image import Grid, Image, axis_aligned_grid, fov_mask, robust_normalize
from crossreg.resample import resample, sampling_theta
from crossreg.transform import AffineTransform, Model, compose

logger = logging.getLogger(__name__)

Metric = Literal["mind", "mi"]
_MIND_FOOTPRINT_VOX = 2  # dilation 1 + patch radius 1: voxels a MIND descriptor looks beyond its centre
_FOV_BLEED_MM = 2.0  # how far fov_mask's smoothing reaches past the last voxel with signal
_MARGIN_MM = 20.0  # room around the initial overlap for the transform to move into


@dataclass(frozen=True)
class RefineConfig:
    """Settings of :func:`refine`: the metric, the spacing pyramid and Adam's stopping rules.

    Every correction parameter is in mm of displacement at the overlap's radius, so one step size
    suits rotation and translation alike.
    """

    # "mind": mean squared difference of dense MIND-SSC descriptors; "mi": Parzen-window mutual
    # information of intensities.
    metric: Metric = "mind"
    # Working-grid spacing of each pyramid level, mm (> 0, at least one), coarse to fine.
    levels_mm: tuple[float, ...] = (4.0, 2.0)
    iterations: int = 100  # most Adam steps per level (>= 1); the step size decays on a cosine over them
    # Adam's initial step as a fraction of the level's spacing: learning_rate x spacing mm per parameter.
    learning_rate: float = 0.05
    # A level ends early once the loss has not improved for this many steps ...
    patience: int = 20
    tolerance: float = 1e-4  # ... by at least this fraction of its value
    mi_bins: int = 32  # Gaussian Parzen bins of "mi" (>= 2)
    # Refine refuses (NoOverlapError) when the overlap holds less than this share (0-1) of the smaller
    # field of view (a small ultrasound cone inside a whole-brain MRI overlaps fully).
    min_overlap_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.metric not in ("mind", "mi"):
            raise ValueError(f"RefineConfig.metric must be 'mind' or 'mi', not {self.metric!r}")
        if not self.levels_mm or min(self.levels_mm) <= 0 or self.iterations < 1 or self.mi_bins < 2:
            raise ValueError("RefineConfig needs levels_mm > 0, iterations >= 1 and mi_bins >= 2")


@dataclass(frozen=True, eq=False)
class Refinement:
    """Result of :func:`refine`.

    transform: the refined fixed->moving transform. loss_initial, loss_final: the metric at the finest
    level for the initial and the refined transform (lower is better; -MI for "mi"). iterations: Adam
    steps over all levels. overlap_fraction: the overlap's volume (the fixed FOV that the refined
    transform maps into the moving FOV) as a share of the smaller FOV's volume.
    """

    transform: AffineTransform
    loss_initial: float
    loss_final: float
    iterations: int
    overlap_fraction: float


@dataclass(frozen=True, eq=False)
class _Level:
    """One pyramid level, ready to evaluate the metric for any transform.

    points_norm: ``(N, d)`` trusted fixed FOV voxels (their descriptor does not reach past the FOV)
    in the fixed grid's [-1, 1] (x, y, z) coordinates. fixed_values: ``(N, C)`` MIND descriptors, or
    for "mi" ``(N, bins)`` Parzen weights of the normalised intensity. fov_norm, fov_mm: ``(M, d)``
    every fixed FOV voxel, normalised and in world mm (float64). moving: ``(C + 2, *moving_grid.shape)``:
    moving descriptors, then its trusted mask, then its FOV mask. fov_points: the smaller FOV's volume
    in working voxels (the voxels above cover only the part of the fixed FOV that can overlap).
    """

    spacing_mm: float
    fixed_grid: Grid
    moving_grid: Grid
    points_norm: torch.Tensor
    fixed_values: torch.Tensor
    fov_norm: torch.Tensor
    fov_mm: torch.Tensor
    moving: torch.Tensor
    fov_points: float


@dataclass(frozen=True, eq=False)
class _Crop:
    """World boxes ``(2, d)`` (lower, upper corner) of each image's FOV that can take part in the
    overlap, and the smaller FOV's volume, which overlap fractions are relative to."""

    fixed_box: np.ndarray
    moving_box: np.ndarray
    smaller_fov_mm3: float


def refine(
    fixed: Image,
    moving: Image,
    initial: AffineTransform,
    model: Model | None = None,
    config: RefineConfig = RefineConfig(),
    device: str | torch.device = "cpu",
) -> Refinement:
    """The transform ``initial`` refined to align ``moving`` to ``fixed`` by intensity on their overlap.

    initial: fixed->moving world transform, e.g. from keypoint matching and RANSAC (~1-3 mm off).
    model: "rigid", "similarity" or "affine" family of the correction; ``None`` uses ``initial.model``.
    Raises NoOverlapError when less than ``config.min_overlap_fraction`` of the fixed field of view
    maps into the moving one.
    """
    _check_inputs(fixed, moving, initial)
    model = model or initial.model
    # Voxels of half the finest level keep all it can see; finer ones only make the blurs slow.
    fixed, moving = (_coarsened(im, min(config.levels_mm) / 2) for im in (fixed, moving))
    init_h = torch.as_tensor(initial.homogeneous(), dtype=torch.float64, device=device)
    crop = _crop(fixed, moving, initial)
    levels = [_prepare_level(fixed, moving, crop, s, config, device) for s in config.levels_mm]
    _check_overlap(levels[0], init_h, config.min_overlap_fraction)
    center, radius = _overlap_center(levels[0], init_h)
    params = torch.zeros(_n_params(model, fixed.ndim), dtype=torch.float64, device=device)

    def transform_h(p: torch.Tensor) -> torch.Tensor:
        return init_h @ _correction(p, model, center, radius)

    total = 0
    for level in levels:
        _check_overlap(level, transform_h(params), config.min_overlap_fraction)
        params, steps = _fit_level(level, params, transform_h, config)
        total += steps
    with torch.no_grad():
        correction = _correction(params, model, center, radius)
        loss_initial = float(_loss(levels[-1], init_h, config))
        loss_final = float(_loss(levels[-1], init_h @ correction, config))
    overlap = _overlap_fraction(levels[-1], init_h @ correction)
    result = compose(AffineTransform.from_homogeneous(correction.cpu().numpy(), model), initial)
    logger.info(
        "refine: loss %.5f -> %.5f in %d steps, overlap %.2f", loss_initial, loss_final, total, overlap
    )
    return Refinement(result, loss_initial, loss_final, total, overlap)


def _check_inputs(fixed: Image, moving: Image, initial: AffineTransform) -> None:
    """Raise DimensionMismatchError unless both images and the transform share a dimension."""
    if not fixed.ndim == moving.ndim == initial.ndim:
        raise DimensionMismatchError(
            f"refine needs images and transform of one dimension; got fixed {fixed.ndim}D, "
            f"moving {moving.ndim}D, transform {initial.ndim}D"
        )


def _coarsened(image: Image, spacing_mm: float) -> Image:
    """``image`` block-averaged by the largest integer factor per axis that keeps voxels at most
    ``spacing_mm`` (the image itself if none is larger than 1): a 0.4 mm volume refined at 2 mm is
    smoothed on 0.8 mm voxels, 8 times fewer. Partial blocks at the far edges are dropped; a block is
    valid where all its voxels are."""
    factors_xyz = np.array([max(1, int(spacing_mm // s)) for s in image.spacing_mm])
    if np.all(factors_xyz == 1):
        return image
    kernel = tuple(int(f) for f in factors_xyz[::-1])
    pool = F.avg_pool3d if image.ndim == 3 else F.avg_pool2d
    x = torch.from_numpy(np.ascontiguousarray(image.array, np.float32))[None, None]
    array = pool(x, kernel)[0, 0].numpy()
    mask = None
    if image.mask is not None:
        mask = pool(torch.from_numpy(image.mask.astype(np.float32))[None, None], kernel)[0, 0].numpy() > 0.999
    first_center_mm = image.grid.index_to_world(((factors_xyz - 1) / 2.0)[None])[0]
    spacing = tuple(float(s * f) for s, f in zip(image.spacing_mm, factors_xyz, strict=True))
    grid = Grid(array.shape, spacing, tuple(float(o) for o in first_center_mm), image.direction)
    return Image(array, grid, mask, image.source)


def _fov_box(image: Image) -> tuple[np.ndarray, float]:
    """World box ``(2, d)`` (lower, upper corner) around the image's FOV, and the FOV's volume (mm^d)."""
    mask = fov_mask(image)
    index_zyx = np.argwhere(mask)
    if index_zyx.size == 0:
        raise NoOverlapError(f"{image.source or 'image'} has no signal (its field-of-view mask is empty)")
    lo, hi = index_zyx.min(axis=0)[::-1], index_zyx.max(axis=0)[::-1]
    box = _aabb(image.grid.index_to_world(_box_corners(np.stack([lo, hi]))))
    return box, float(mask.sum() * np.prod(image.spacing_mm))


def _aabb(points_mm: np.ndarray) -> np.ndarray:
    """``(2, d)`` axis-aligned bounding box of points ``(N, d)``."""
    return np.stack([points_mm.min(axis=0), points_mm.max(axis=0)])


def _box_corners(box: np.ndarray) -> np.ndarray:
    """The ``2**d`` corners ``(2**d, d)`` of a box ``(2, d)``."""
    d = box.shape[1]
    bits = np.array(np.meshgrid(*[[0, 1]] * d, indexing="ij")).reshape(d, -1).T
    return np.where(bits == 1, box[1], box[0])


def _crop(fixed: Image, moving: Image, initial: AffineTransform) -> _Crop:
    """The parts of both FOVs that ``initial``, give or take a margin, makes overlap."""
    (box_f, fixed_mm3), (box_m, moving_mm3) = _fov_box(fixed), _fov_box(moving)
    boxes = (
        _intersect(box_f, _aabb(initial.inverse().apply(_box_corners(box_m)))),
        _intersect(box_m, _aabb(initial.apply(_box_corners(box_f)))),
    )
    if any(np.any(b[0] >= b[1]) for b in boxes):
        raise NoOverlapError(
            "under the initial transform the moving field of view lies outside the fixed one; "
            "check that the transform maps fixed to moving points, or register coarsely first"
        )
    return _Crop(boxes[0], boxes[1], min(fixed_mm3, moving_mm3))


def _intersect(own: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Box ``own`` ``(2, d)`` cut to box ``other`` grown by the margin (empty if lower >= upper)."""
    return np.stack([np.maximum(own[0], other[0] - _MARGIN_MM), np.minimum(own[1], other[1] + _MARGIN_MM)])


def _working(image: Image, region: np.ndarray, spacing_mm: float) -> Image:
    """``image`` smoothed against aliasing and resampled on an isotropic grid over ``region`` ``(2, d)``."""
    sigma_vox = tuple(0.5 * math.sqrt(max(spacing_mm**2 - s**2, 0.0)) / s for s in image.spacing_mm[::-1])
    blurred = gaussian_blur(torch.from_numpy(np.ascontiguousarray(image.array, np.float32))[None], sigma_vox)
    return resample(image.with_array(blurred[0].numpy(), image.mask), axis_aligned_grid(region, spacing_mm))


def _descriptors(image: Image, metric: Metric) -> torch.Tensor:
    """``(C, *image.shape)``: dense MIND-SSC (C = 12 in 3D, 4 in 2D) or normalised intensity (C = 1)."""
    if metric == "mind":
        return mind_ssc(torch.from_numpy(image.array))
    return torch.from_numpy(robust_normalize(image).array)[None]


def _masks(image: Image) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool ``(*image.shape)`` FOV mask, and its trusted part: voxels whose MIND does not see past it."""
    fov = torch.from_numpy(fov_mask(image))
    return fov, erode(fov, _MIND_FOOTPRINT_VOX + math.ceil(_FOV_BLEED_MM / image.spacing_mm[0]))


def _normalised_points(grid: Grid, mask: torch.Tensor) -> torch.Tensor:
    """``(N, d)`` float64 [-1, 1] (x, y, z) grid coordinates (align_corners) of the mask's voxels."""
    index_xyz = torch.nonzero(mask).flip(1).double()
    size_xyz = torch.as_tensor(grid.size_xyz, dtype=torch.float64)
    return 2.0 * index_xyz / (size_xyz - 1).clamp(min=1) - 1.0


def _prepare_level(
    fixed: Image,
    moving: Image,
    crop: _Crop,
    spacing_mm: float,
    config: RefineConfig,
    device: str | torch.device,
) -> _Level:
    """Working grids, descriptors and FOV masks of both images at one pyramid level."""
    fw, mw = _working(fixed, crop.fixed_box, spacing_mm), _working(moving, crop.moving_box, spacing_mm)
    f_fov, f_trusted = _masks(fw)
    f_values = _descriptors(fw, config.metric)[:, f_trusted].T
    if config.metric == "mi":
        f_values = _parzen(f_values[:, 0], config.mi_bins)
    fov_index_xyz = torch.nonzero(f_fov).flip(1).numpy()
    m_fov, m_trusted = _masks(mw)
    moving_stack = torch.cat([_descriptors(mw, config.metric), m_trusted[None].float(), m_fov[None].float()])
    return _Level(
        spacing_mm=spacing_mm,
        fixed_grid=fw.grid,
        moving_grid=mw.grid,
        points_norm=_normalised_points(fw.grid, f_trusted).to(device),
        fixed_values=f_values.contiguous().to(device),
        fov_norm=_normalised_points(fw.grid, f_fov).to(device),
        fov_mm=torch.from_numpy(fw.grid.index_to_world(fov_index_xyz)).to(device),
        moving=moving_stack.to(device),
        fov_points=crop.smaller_fov_mm3 / spacing_mm**fixed.ndim,
    )


def _sample(
    level: _Level, volume: torch.Tensor, points_norm: torch.Tensor, transform_h: torch.Tensor
) -> torch.Tensor:
    """``(C, N)``: moving-grid ``volume`` ``(C, *shape)`` sampled at ``T`` of fixed points ``(N, d)``."""
    theta = sampling_theta(level.fixed_grid, level.moving_grid, transform_h)
    coords = (points_norm @ theta[:, :-1].T + theta[:, -1]).float()
    d = coords.shape[1]
    grid = coords.view(1, -1, *([1] * (d - 1)), d)
    sampled = F.grid_sample(volume[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return sampled.reshape(volume.shape[0], -1)


def _loss(level: _Level, transform_h: torch.Tensor, config: RefineConfig) -> torch.Tensor:
    """The metric (lower is better) over trusted fixed points that map to trusted moving points."""
    sampled = _sample(level, level.moving[:-1], level.points_norm, transform_h)
    values, weight = sampled[:-1].T, (sampled[-1] > 0.5).float()
    if config.metric == "mi":
        return -_mutual_information(level.fixed_values, values[:, 0], weight)
    per_point = ((values - level.fixed_values) ** 2).mean(dim=1)
    return (weight * per_point).sum() / weight.sum().clamp(min=1.0)


def _parzen(values: torch.Tensor, bins: int) -> torch.Tensor:
    """``(N, bins)`` Gaussian Parzen-window weights of ``values`` ``(N,)`` in [0, 1]; rows sum to 1."""
    centers = torch.linspace(0.0, 1.0, bins, dtype=values.dtype, device=values.device)
    k = torch.exp(-0.5 * ((values[:, None] - centers) * (bins - 1)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def _mutual_information(fixed_bins: torch.Tensor, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mutual information (nats) of fixed Parzen weights ``(N, B)`` and moving ``values`` ``(N,)``."""
    joint = (fixed_bins * weight[:, None]).T @ _parzen(values, fixed_bins.shape[1])
    joint = joint / joint.sum().clamp(min=1e-12)
    pa, pb = joint.sum(dim=1, keepdim=True), joint.sum(dim=0, keepdim=True)
    return (joint * (torch.log(joint + 1e-12) - torch.log(pa * pb + 1e-12))).sum()


def _inside_moving(level: _Level, transform_h: torch.Tensor) -> torch.Tensor:
    """Bool ``(M,)``: which fixed FOV voxels map into the moving FOV."""
    with torch.no_grad():
        return _sample(level, level.moving[-1:], level.fov_norm, transform_h)[0] > 0.5


def _overlap_fraction(level: _Level, transform_h: torch.Tensor) -> float:
    """The overlap (fixed FOV voxels that map into the moving FOV) as a share of the smaller FOV."""
    return float(_inside_moving(level, transform_h).sum()) / level.fov_points


def _check_overlap(level: _Level, transform_h: torch.Tensor, min_fraction: float) -> None:
    """Raise NoOverlapError when the overlap holds less than ``min_fraction`` of the smaller FOV."""
    fraction = _overlap_fraction(level, transform_h)
    if fraction < min_fraction:
        raise NoOverlapError(
            f"the images overlap in only {100 * fraction:.1f}% of the smaller field of view at "
            f"{level.spacing_mm:g} mm (refine needs {100 * min_fraction:.0f}%); the initial transform is "
            "probably wrong: check it maps fixed to moving points, or register coarsely first"
        )


def _overlap_center(level: _Level, transform_h: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Centre ``(d,)`` (mm) and RMS radius (mm) of the fixed FOV voxels that map into the moving FOV."""
    pts = level.fov_mm[_inside_moving(level, transform_h)]
    center = pts.mean(dim=0)
    radius = float(((pts - center) ** 2).sum(dim=1).mean().sqrt().clamp(min=level.spacing_mm))
    return center, radius


def _n_params(model: Model, ndim: int) -> int:
    """Number of correction parameters: rotation (+ log-scale) or full linear part, plus translation."""
    if model not in ("rigid", "similarity", "affine"):
        raise ValueError(f"refine model must be 'rigid', 'similarity' or 'affine', not {model!r}")
    n_rot = ndim * (ndim - 1) // 2
    return {"rigid": n_rot, "similarity": n_rot + 1, "affine": ndim * ndim}[model] + ndim


def _correction(params: torch.Tensor, model: Model, center: torch.Tensor, radius: float) -> torch.Tensor:
    """Homogeneous ``(d+1, d+1)`` correction acting about ``center``; every parameter is in mm.

    Rotation angles, log-scale and linear-part offsets are multiplied by ``radius`` so one unit moves
    the overlap's boundary by about 1 mm, like one unit of translation.
    """
    d = center.numel()
    linear_params, shift = params[:-d] / radius, params[-d:]
    if model == "affine":
        linear = torch.eye(d, dtype=params.dtype, device=params.device) + linear_params.view(d, d)
    else:
        rows, cols = torch.triu_indices(d, d, 1, device=params.device)
        upper = torch.zeros(d, d, dtype=params.dtype, device=params.device).index_put(
            (rows, cols), linear_params[: rows.numel()]
        )
        linear = torch.linalg.matrix_exp(upper - upper.T)
        if model == "similarity":
            linear = linear * torch.exp(linear_params[-1])
    top = torch.cat([linear, (center + shift - linear @ center)[:, None]], dim=1)
    bottom = torch.zeros(1, d + 1, dtype=params.dtype, device=params.device)
    bottom[0, d] = 1.0
    return torch.cat([top, bottom])


def _fit_level(
    level: _Level, params: torch.Tensor, build: Callable[[torch.Tensor], torch.Tensor], config: RefineConfig
) -> tuple[torch.Tensor, int]:
    """Best parameters found by Adam at one level, and the number of steps taken.

    build: maps parameters to the homogeneous fixed->moving transform. The step size decays on a cosine
    so the last steps settle well below the working voxel size; the level ends early when the loss has
    not improved for ``config.patience`` steps.
    """
    params = params.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([params], lr=config.learning_rate * level.spacing_mm)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.iterations)
    best_loss, best_params, best_step, steps = math.inf, params.detach().clone(), 0, 0
    while steps < config.iterations and steps - best_step <= config.patience:
        optimiser.zero_grad()
        loss = _loss(level, build(params), config)
        if loss.item() < best_loss - config.tolerance * abs(loss.item()):
            best_loss, best_params, best_step = loss.item(), params.detach().clone(), steps
        loss.backward()
        optimiser.step()
        schedule.step()
        steps += 1
    logger.debug("level %g mm: loss %.5f after %d steps", level.spacing_mm, best_loss, steps)
    return best_params, steps
