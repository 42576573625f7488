"""Keypoints: where to look. Multi-scale Hessian blob/corner saliency, NMS in mm, seeded sampling.

Saliency is the scale-normalised determinant of the Hessian as a geometric mean of curvatures,
``sigma^2 * |det H|^(1/d)``, maximised over scales. Blobs and corners curve in every direction;
edges, ridges and sheets have a flat direction, so one eigenvalue and the score are ~0, which
matters because points on an edge slide along it and match ambiguously. The absolute value makes it
blind to contrast polarity, which flips across modalities.

Local maxima are kept over a box of ``nms_radius_mm``, refined to sub-voxel position (a parabola per
axis, at most half a voxel), and the box is one voxel wider than the radius needs so that kept
keypoints stay ``nms_radius_mm`` apart after refinement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from crossreg.filters import gaussian_blur
from crossreg.image import Image, fov_mask, robust_normalize


@dataclass(frozen=True)
class KeypointConfig:
    """How :func:`detect_keypoints` finds keypoints; all lengths in world millimetres.

    Where fewer than ``min_keypoints`` maxima are found (a small ultrasound cone, the flat brain of a
    CT), a regular grid of points (score 0) is added: a descriptor can still be matched where no
    detector fires, and without points there is no match.
    """

    # Gaussian sigmas, mm (> 0, at least one), of the saliency scales; a voxel's saliency is its largest.
    scales_mm: tuple[float, ...] = (2.0, 3.0)
    # Kept keypoints are at least this far apart, mm (non-maximum suppression, whole-voxel box).
    nms_radius_mm: float = 2.0
    # Kept keypoints lie at least this far inside the field-of-view mask, mm, so the descriptor's
    # neighbourhood holds data.
    border_mm: float = 10.0
    max_keypoints: int = 1500  # cap on the detected keypoints (>= 0); grid points come on top
    # "top" keeps the most salient maxima; "probabilistic" draws them (seeded) with probability
    # ~ saliency**exponent, so repeated draws cover more of the image.
    sampling: Literal["probabilistic", "top"] = "top"
    exponent: float = 4.0  # only with sampling="probabilistic"; higher favours the most salient
    # Maxima below this fraction (0-1) of the strong keypoints' saliency (99th percentile of the
    # maxima) are noise and never returned.
    min_saliency: float = 0.1
    # Fewer detected keypoints than this (a count; 0: never) adds the grid (what it does for CT:
    # docs/benchmarks.md).
    min_keypoints: int = 300
    grid_border_mm: float = 4.0  # grid points lie at least this far inside the field of view, mm
    # Grid step, mm, rounded up to whole voxels per axis; coarser where it would exceed max_grid_points.
    grid_spacing_mm: float = 3.0
    max_grid_points: int = 4000  # about the most grid points added (a count)

    def __post_init__(self) -> None:
        if self.sampling not in ("probabilistic", "top"):
            raise ValueError(f"sampling={self.sampling!r}; use 'probabilistic' or 'top'")
        if not self.scales_mm or min(self.scales_mm) <= 0 or self.max_keypoints < 0:
            raise ValueError("scales_mm must be positive and non-empty, max_keypoints >= 0")


@dataclass(frozen=True, eq=False)
class Keypoints:
    """Detected keypoints, most salient first.

    points_mm: ``(N, d)`` float32, LPS world coordinates in ITK ``(x, y, z)`` order.
    scores: ``(N,)`` float32 saliency.
    """

    points_mm: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.points_mm.shape[0])


def saliency(image: Image, config: KeypointConfig = KeypointConfig()) -> torch.Tensor:
    """Blob/corner saliency ``(*spatial)`` float32, >= 0, invariant to affine intensity changes."""
    norm = robust_normalize(image)
    x = torch.from_numpy(np.ascontiguousarray(norm.array, np.float32))
    valid = torch.from_numpy(np.ascontiguousarray(image.valid_mask()))
    return saliency_tensor(x, valid, tuple(float(s) for s in image.spacing_mm[::-1]), config)


def saliency_tensor(
    x: torch.Tensor, valid: torch.Tensor, spacing_zyx: tuple[float, ...], config: KeypointConfig
) -> torch.Tensor:
    """:func:`saliency` of a normalised array ``x`` ``(*spatial)`` with its bool ``valid`` mask, on
    their device."""
    out = torch.zeros_like(x)
    for sigma_mm in config.scales_mm:
        smooth = _masked_blur(x, valid, tuple(sigma_mm / s for s in spacing_zyx))
        det = torch.linalg.det(_hessian(smooth, spacing_zyx)).abs()
        out = torch.maximum(out, sigma_mm**2 * det ** (1.0 / x.dim()))
    return out * valid


def _masked_blur(x: torch.Tensor, valid: torch.Tensor, sigma_vox: tuple[float, ...]) -> torch.Tensor:
    """Normalised convolution: a Gaussian blur ``(*spatial)`` that ignores voxels outside ``valid``.

    Without it the edge of a partial field of view (zeros next to tissue) would look like anatomy.
    """
    m = valid.to(x.dtype)
    num_den = gaussian_blur(torch.stack([x * m, m]), sigma_vox)
    return num_den[0] / num_den[1].clamp_min(1e-3)


def _hessian(x: torch.Tensor, spacing: tuple[float, ...]) -> torch.Tensor:
    """Second derivatives (per mm^2) of ``x`` ``(*spatial)`` by central differences: ``(*spatial, d, d)``."""
    d = x.dim()
    grads = torch.gradient(x, spacing=spacing)
    hess = torch.empty(*x.shape, d, d, dtype=x.dtype, device=x.device)
    for i in range(d):
        second = torch.gradient(grads[i], spacing=spacing[i:], dim=tuple(range(i, d)))
        for j in range(i, d):
            hess[..., i, j] = hess[..., j, i] = second[j - i]
    return hess


def detect_keypoints(
    image: Image,
    config: KeypointConfig = KeypointConfig(),
    seed: int | None = 0,
    mask: np.ndarray | None = None,
) -> Keypoints:
    """Keypoints of ``image``: saliency maxima inside the FOV mask eroded by ``border_mm``.

    mask: bool array of the image's shape where keypoints may lie; default: the image's field of view
    (:func:`crossreg.image.fov_mask`; a working image carries it as its mask already: pass that).
    seed: for probabilistic sampling (``None`` draws a fresh one); different seeds give different
    keypoint sets of the same quality. Works on any grid; designed for working grids.
    """
    sal = saliency(image, config)
    region = fov_mask(image) if mask is None else np.asarray(mask, bool)
    spacing_zyx = tuple(float(s) for s in image.spacing_mm[::-1])
    index_zyx, scores = salient_maxima(
        sal, torch.from_numpy(np.ascontiguousarray(region)), spacing_zyx, config, seed
    )
    points = image.grid.index_to_world(index_zyx.numpy()[:, ::-1])
    if len(points) < config.min_keypoints:
        grid = grid_points(
            image, region, config.grid_border_mm, config.grid_spacing_mm, config.max_grid_points
        )
        points = np.concatenate([points, grid])
        scores = torch.cat([scores, torch.zeros(len(grid))])
    return Keypoints(torch.from_numpy(points).float(), scores)


def salient_maxima(
    sal: torch.Tensor,
    region: torch.Tensor,
    spacing_zyx: tuple[float, ...],
    config: KeypointConfig,
    seed: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The keypoints of saliency ``sal`` ``(*spatial)`` inside bool ``region`` eroded by
    ``config.border_mm``: sub-voxel array indices ``(K, d)`` float64 and scores ``(K,)`` float32, most
    salient first, on ``sal``'s device (:func:`detect_keypoints` without the grid fallback)."""
    spacing = np.asarray(spacing_zyx, float)
    inside = _erode(region.to(sal.device), _radius_vox(config.border_mm, spacing))
    maxima = _local_maxima(sal, _radius_vox(config.nms_radius_mm, spacing)) & inside
    index = maxima.nonzero()
    scores = sal[maxima]
    keep = scores >= config.min_saliency * _reference_saliency(scores)
    index, scores = index[keep], scores[keep]
    chosen = _choose(scores, config, seed).to(sal.device)
    return _refine(sal, index[chosen]), scores[chosen].float()


def grid_points(
    image: Image, region: np.ndarray, border_mm: float, spacing_mm: float, max_points: int | None = None
) -> np.ndarray:
    """World points ``(G, d)`` of a regular grid of ``image``'s voxels inside the bool array ``region``
    eroded by ``border_mm``, every ``spacing_mm`` rounded up to whole voxels along each axis (3 mm on
    2 mm voxels: every second voxel), or coarser so that there are at most ~``max_points`` (None: no
    cap)."""
    spacing_zyx = np.asarray(image.spacing_mm[::-1], float)
    inside = _erode(
        torch.from_numpy(np.ascontiguousarray(region)), _radius_vox(border_mm, spacing_zyx)
    ).numpy()
    step_mm = spacing_mm
    if max_points is not None:
        volume_mm = inside.sum() * float(np.prod(spacing_zyx))
        step_mm = max(spacing_mm, (volume_mm / max(max_points, 1)) ** (1 / image.ndim))
    stride = tuple(max(1, int(np.ceil(step_mm / s - 1e-6))) for s in spacing_zyx)
    picked = np.argwhere(inside[tuple(slice(None, None, k) for k in stride)]) * np.asarray(stride)
    return image.grid.index_to_world(picked[:, ::-1].astype(float))


def _radius_vox(radius_mm: float, spacing_zyx: np.ndarray) -> tuple[int, ...]:
    """Box half-widths per array axis of at least ``radius_mm`` (and one voxel).

    Maxima of such a box are more than ``ceil(radius_mm / s)`` voxels apart along some axis, so still
    at least ``radius_mm`` apart after sub-voxel refinement moves each by up to half a voxel.
    """
    return tuple(max(1, math.ceil(radius_mm / s - 1e-6)) for s in spacing_zyx)


def _max_pool(x: torch.Tensor, radius_vox: tuple[int, ...], pad_value: float = -math.inf) -> torch.Tensor:
    """Maximum of ``x`` ``(*spatial)`` over a box of half-widths ``radius_vox``, outside = ``pad_value``.

    Separable (one 1D pass per axis), so a 10 mm box on a 1 mm grid costs 3 x 21, not 21^3, per voxel.
    """
    pool = F.max_pool3d if x.dim() == 3 else F.max_pool2d
    out = x[None, None]
    for axis, r in enumerate(radius_vox):
        pad = [0, 0] * x.dim()
        pad[2 * (x.dim() - 1 - axis)] = pad[2 * (x.dim() - 1 - axis) + 1] = r
        kernel = tuple(2 * r + 1 if a == axis else 1 for a in range(x.dim()))
        out = pool(F.pad(out, pad, value=pad_value), kernel, stride=1)
    return out[0, 0]


def _erode(mask: torch.Tensor, radius_vox: tuple[int, ...]) -> torch.Tensor:
    """Box erosion of a bool ``(*spatial)`` mask; outside the array counts as background."""
    return _max_pool((~mask).float(), radius_vox, pad_value=1.0) < 0.5


def _local_maxima(sal: torch.Tensor, radius_vox: tuple[int, ...]) -> torch.Tensor:
    """Bool ``(*spatial)``: strict maxima of ``sal`` over the box; no two kept maxima share a box.

    Plateaus (equal values within a box) keep only their highest linear index, so the minimum
    distance holds even on synthetic images with exact ties.
    """
    is_max = (sal >= _max_pool(sal, radius_vox)) & (sal > 0)
    order = torch.arange(sal.numel(), dtype=torch.float64, device=sal.device).view(sal.shape)
    tag = torch.where(is_max, order, torch.full_like(order, -1.0))
    return is_max & (_max_pool(tag, radius_vox) == order)


def _reference_saliency(scores: torch.Tensor) -> float:
    """The saliency of a strong keypoint: 99th percentile of the maxima (robust to one outlier)."""
    return float(torch.quantile(scores.double(), 0.99)) if scores.numel() else 0.0


def _choose(scores: torch.Tensor, config: KeypointConfig, seed: int | None) -> torch.Tensor:
    """Indices ``(K,)`` into ``scores`` ``(M,)``, most salient first, ``K = min(M, max_keypoints)``."""
    k = min(int(scores.numel()), config.max_keypoints)
    if config.sampling == "top" or k == scores.numel():
        return torch.topk(scores, k).indices
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    weights = ((scores.double() / scores.max()) ** config.exponent).cpu()
    picked = torch.multinomial(weights, k, replacement=False, generator=generator)
    return picked[torch.argsort(scores.cpu()[picked], descending=True)]


def _refine(sal: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Sub-voxel positions ``(K, d)`` (array order) of maxima ``index`` ``(K, d)``: 1D parabola per axis."""
    shape = torch.tensor(sal.shape, device=sal.device)
    offsets = []
    for axis in range(sal.dim()):
        step = torch.zeros(sal.dim(), dtype=torch.long, device=sal.device)
        step[axis] = 1
        lo = tuple((index - step).clamp(min=0).T)
        hi = tuple(torch.minimum(index + step, shape - 1).T)
        s0, s_lo, s_hi = sal[tuple(index.T)], sal[lo], sal[hi]
        curvature = s_lo - 2 * s0 + s_hi
        delta = torch.where(curvature < 0, 0.5 * (s_lo - s_hi) / curvature.clamp(max=-1e-12), 0.0)
        offsets.append(delta.clamp(-0.5, 0.5))
    return index.double() + torch.stack(offsets, dim=1).double()
