"""MIND-SSC: the modality independent neighbourhood descriptor, self-similarity context variant.

Heinrich et al., "Towards realtime multimodal fusion for image-guided interventions using
self-similarity context", MICCAI 2013. Each channel compares two patches of the *same* image that sit
on neighbouring voxels of the centre (pairs of the 2d-neighbourhood that are sqrt(2) apart: 12 in 3D,
4 in 2D), so it describes local structure, not intensity, and survives modality changes.

``mind_maps`` computes it with neighbour offsets along the *world* axes (in mm), so the channels mean
the same thing whatever the direction matrix or axis order of the grid; ``mind_descriptors`` turns
the maps into one vector per keypoint by sampling them on a world-aligned pattern around it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from crossreg.features.base import Description
from crossreg.filters import box_mean, gaussian_blur
from crossreg.image import Grid, Image
from crossreg.resample import grid_coords, grid_index, sampling_theta

#: Index coordinates this close to whole numbers (in voxels) are voxel centres.
_ON_VOXEL = 1e-6


@dataclass(frozen=True)
class MindConfig:
    """Dense MIND-SSC and the sparse keypoint descriptor built on it; lengths in world mm.

    The keypoint descriptor samples the dense maps on a world-aligned grid of positions around the
    keypoint: with the defaults 5x5 positions x 8 channels = 200 dims in 2D, 3x3x3 x 24 = 648 in 3D.
    """

    # Neighbour distances, mm, of the self-similarity pairs; one 12- (3D) or 4-channel (2D) block each.
    dilations_mm: tuple[float, ...] = (2.0, 4.0)
    patch_sigma_mm: float = 1.5  # Gaussian sigma of the compared patches, mm
    # The sampling grid spans +-this around the keypoint along each world axis, mm.
    layout_radius_mm: float = 8.0
    # Positions per axis of the sampling grid (a count). 2D takes more than 3D: it has a third of the
    # channels per position.
    layout_size_2d: int = 5
    layout_size_3d: int = 3


def ssc_pairs(ndim: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Neighbour offset pairs (unit steps) sqrt(2) apart: 12 pairs in 3D, 4 in 2D."""
    steps = []
    for axis in range(ndim):
        for sign in (1, -1):
            s = [0] * ndim
            s[axis] = sign
            steps.append(tuple(s))
    return [
        (a, b)
        for a, b in itertools.combinations(steps, 2)
        if sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) == 2
    ]


def _shift(x: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """``x`` ``(*spatial)`` sampled at ``index + offset`` with edge replication."""
    r = max(abs(o) for o in offset)
    pad = [r] * (2 * x.dim())
    padded = F.pad(x[None, None], pad, mode="replicate")[0, 0]
    return padded[tuple(slice(r + o, r + o + n) for o, n in zip(offset, x.shape, strict=True))]


def _self_similarity(ssd: torch.Tensor) -> torch.Tensor:
    """MIND from patch distances ``(P, *spatial)``: ``exp(-ssd / local variance)``, max 1 per voxel."""
    ssd = ssd - ssd.min(dim=0, keepdim=True).values
    variance = ssd.mean(dim=0, keepdim=True)
    mean_var = variance.mean()
    variance = variance.clamp(min=1e-3 * mean_var.item() + 1e-12, max=1e3 * mean_var.item() + 1e-12)
    mind = torch.exp(-ssd / variance)
    return mind / mind.max(dim=0, keepdim=True).values


def mind_ssc(volume: torch.Tensor, dilation_vox: int = 1, patch_radius_vox: int = 1) -> torch.Tensor:
    """Dense MIND-SSC of ``volume`` ``(*spatial)``: ``(P, *spatial)``, P = 12 (3D) or 4 (2D), in [0, 1].

    dilation_vox: neighbour distance in voxels; patch_radius_vox: radius of the compared patches.
    Offsets are along the array axes; use :func:`mind_maps` for world-aligned channels.
    """
    x = volume.float()
    pairs = ssc_pairs(x.dim())
    steps = {step for pair in pairs for step in pair}
    shifted = {step: _shift(x, tuple(dilation_vox * v for v in step)) for step in steps}
    ssd = torch.stack([(shifted[a] - shifted[b]) ** 2 for a, b in pairs])
    return _self_similarity(box_mean(ssd, patch_radius_vox))


def _world_shift(x: torch.Tensor, grid: Grid, offset_mm: np.ndarray) -> torch.Tensor:
    """``x`` ``(*grid.shape)`` sampled at each voxel's world position plus ``offset_mm`` ``(d,)``.

    Whole-voxel offsets (any axis-aligned grid whose spacing divides the offset) are exact slices;
    others are interpolated. Both clamp at the array edge.
    """
    d = grid.ndim
    ends = grid.world_to_index(np.stack([np.asarray(grid.origin_mm), grid.origin_mm + offset_mm]))
    index_offset = ends[1] - ends[0]
    if np.allclose(index_offset, np.round(index_offset), atol=1e-6):
        return _shift(x, tuple(int(v) for v in np.round(index_offset[::-1])))
    translate = torch.eye(d + 1, dtype=torch.float64)
    translate[:d, d] = torch.as_tensor(offset_mm, dtype=torch.float64)
    theta = sampling_theta(grid, grid, translate).to(x.device, x.dtype)
    coords = F.affine_grid(theta[None], [1, 1, *grid.shape], align_corners=True)
    return F.grid_sample(x[None, None], coords, padding_mode="border", align_corners=True)[0, 0]


def _world_mind(x: torch.Tensor, grid: Grid, dilation_mm: float, patch_sigma_mm: float) -> torch.Tensor:
    """MIND-SSC ``(P, *spatial)`` of ``x`` with neighbour offsets of ``dilation_mm`` along world axes."""
    pairs = ssc_pairs(grid.ndim)
    steps = {step for pair in pairs for step in pair}
    shifted = {step: _world_shift(x, grid, dilation_mm * np.asarray(step, float)) for step in steps}
    ssd = torch.stack([(shifted[a] - shifted[b]) ** 2 for a, b in pairs])
    sigma_vox = tuple(patch_sigma_mm / s for s in grid.spacing_mm[::-1])
    return _self_similarity(gaussian_blur(ssd, sigma_vox))


def mind_maps(
    image: Image, config: MindConfig = MindConfig(), device: torch.device | str = "cpu"
) -> torch.Tensor:
    """World-aligned MIND-SSC of ``image``, all dilations stacked: ``(C, *spatial)`` float32 on ``device``.

    C = 12 (3D) or 4 (2D) per dilation. Channel ``k`` compares the same world-axis neighbours on any
    grid, so the same anatomy stored with flipped or permuted axes gives the same channels.
    """
    x = torch.from_numpy(np.ascontiguousarray(image.array, np.float32)).to(device)
    return mind_maps_tensor(x, image.grid, config)


def mind_maps_tensor(x: torch.Tensor, grid: Grid, config: MindConfig = MindConfig()) -> torch.Tensor:
    """:func:`mind_maps` of an array ``x`` ``(*grid.shape)`` float32, on its device."""
    return torch.cat([_world_mind(x, grid, d, config.patch_sigma_mm) for d in config.dilations_mm])


def layout_offsets_mm(ndim: int, config: MindConfig = MindConfig()) -> torch.Tensor:
    """World offsets ``(K, d)`` (x, y, z order) sampled around each keypoint, ``K = size**d``."""
    size = config.layout_size_2d if ndim == 2 else config.layout_size_3d
    ticks = torch.linspace(-config.layout_radius_mm, config.layout_radius_mm, size, dtype=torch.float64)
    mesh = torch.meshgrid(*[ticks] * ndim, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def mind_descriptors(
    image: Image,
    points_mm: torch.Tensor,
    config: MindConfig = MindConfig(),
    maps: torch.Tensor | None = None,
) -> torch.Tensor:
    """L2-normalised MIND-SSC descriptors ``(N, K * C)`` float32 of world points ``(N, d)`` mm.

    maps: ``mind_maps(image, config)`` if already computed, ``(C, *image.shape)``, on any device;
    the descriptors come back on its device. Samples (trilinear) outside the image read as zero;
    a point with its whole layout outside gets the zero vector. Where every sample falls on a voxel
    centre (grids of points on the working grid, a layout of whole voxels), the maps are read there
    directly: what trilinear sampling gives, without its cost or its coordinates' float32 rounding.
    """
    maps = mind_maps(image, config) if maps is None else maps
    d = image.ndim
    offsets = layout_offsets_mm(d, config)
    n, k, c = points_mm.shape[0], offsets.shape[0], maps.shape[0]
    points, offsets = points_mm.detach().to(maps.device, torch.float64), offsets.to(maps.device)
    voxels = _whole_voxels(image.grid, points, offsets)
    if voxels is not None:
        desc = _read_voxels(maps, voxels).reshape(n, k * c)
    else:
        world = (points[:, None, :] + offsets[None]).reshape(-1, d)
        coords = grid_coords(image.grid, world).to(maps.dtype).view(1, n, k, *[1] * (d - 2), d)
        values = F.grid_sample(maps[None], coords, mode="bilinear", padding_mode="zeros", align_corners=True)
        desc = values.reshape(c, n, k).permute(1, 2, 0).reshape(n, k * c)
    desc -= desc.mean(dim=1, keepdim=True)
    return desc.div_(desc.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()


def _whole_voxels(grid: Grid, points_mm: torch.Tensor, offsets_mm: torch.Tensor) -> torch.Tensor | None:
    """Voxel indices ``(N, K, d)`` int32 (x, y, z order) of points ``(N, d)`` plus layout offsets
    ``(K, d)`` (world mm, float64) when the points are voxel centres and the offsets whole voxels (of
    an axis-aligned grid: the working grids are), else None."""
    if len(points_mm) == 0 or not np.allclose(grid.direction, np.eye(grid.ndim)):
        return None
    at_points = grid_index(grid, points_mm)
    steps = offsets_mm / torch.as_tensor(grid.spacing_mm, dtype=torch.float64, device=offsets_mm.device)
    whole = [x.round() for x in (at_points, steps)]
    if max(float((x - w).abs().max()) for x, w in zip((at_points, steps), whole, strict=True)) > _ON_VOXEL:
        return None
    return whole[0].int()[:, None, :] + whole[1].int()[None]


def _read_voxels(maps: torch.Tensor, index_xyz: torch.Tensor) -> torch.Tensor:
    """``maps`` ``(C, *shape)`` at whole-voxel indices ``(..., d)`` (x, y, z order): ``(..., C)``, zero
    outside."""
    c, shape_xyz = maps.shape[0], maps.shape[1:][::-1]
    size = torch.as_tensor(shape_xyz, dtype=torch.int32, device=maps.device)
    strides = torch.cumprod(torch.cat([size.new_ones(1), size[:-1]]), dim=0)
    inside = ((index_xyz >= 0) & (index_xyz < size)).all(dim=-1)
    linear = torch.where(inside, (index_xyz * strides).sum(dim=-1, dtype=torch.int64), int(size.prod()))
    # Channels last (one row per voxel, then a row of zeros for outside): each sample is one row.
    table = torch.cat([maps.reshape(c, -1).T, maps.new_zeros(1, c)])
    return table.index_select(0, linear.reshape(-1)).reshape(*linear.shape, c)


@dataclass(frozen=True)
class MindFeatures:
    """MIND-SSC, hand-crafted for any modality pair: the ``mind`` entry of ``FEATURES``."""

    config: MindConfig = field(default_factory=MindConfig)
    device: str = "cpu"
    dense_by_default: ClassVar[bool] = False

    def describe(self, image: Image) -> Description:
        """``image``'s dense MIND-SSC maps, computed once, read at any point."""
        maps = mind_maps(image, self.config, self.device)
        return Description(image, partial(mind_descriptors, image, config=self.config, maps=maps))
