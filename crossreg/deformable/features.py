"""The deformable stage's inputs: both images' MIND-SSC features on the fixed image's working grid,
the moving one seen through the linear result, each with its field-of-view mask and its structure
confidence.

Both images are half histogram-equalised first (:func:`equalised`): MIND-SSC's variance floor is
relative to the whole image's mean, and in a CT (air at -1000 HU, bone at 1500) the brain's 10-30 HU
tissue contrast falls under it, so its descriptors come out flat; ranks spread the soft tissue over
half the intensity range, whatever the modality.

MIND-SSC divides by the local variance, so where an image is flat (CT soft tissue, the inside of
white matter) its channels are normalised noise, and a field that matches them follows noise. The
confidence ``c = s / (s + tau)`` of the local gradient energy ``s`` (Gaussian-smoothed) says where an
image has structure: ``tau`` is ``structure_floor`` times the energy of its flattest tenth (the noise
floor), so a flat region weighs little and the regulariser places the field there.

Where the two images' descriptors do not agree at the linear result (:func:`agreement`: MR against
ultrasound, whose speckle and shadows MIND-SSC describes as structure), matching them moves the field
by what the two modalities do differently, not by what the tissue did: the stage then leaves them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from crossreg.features.mind import MindConfig, mind_maps
from crossreg.filters import erode, gaussian_blur
from crossreg.image import Grid, Image, axis_aligned_grid, fov_mask, robust_normalize
from crossreg.resample import resample, working_image
from crossreg.transform import AffineTransform

# MIND reads this far (in working voxels) beyond its centre: dilation 1 plus the patch's reach.
_FOOTPRINT_VOX = 2
_FLOOR_QUANTILE = 0.1  # the flattest tenth of a field of view sets its noise floor
_RANK_LEVELS = 1024  # quantiles that map intensities to ranks (:func:`equalised`)
_RANK_SAMPLES = 200_000  # at most about this many voxels estimate them


@dataclass(frozen=True, eq=False)
class PairFeatures:
    """Features of both images on ``grid`` (the fixed image's working grid, axis-aligned).

    fixed, moving: ``(C, *grid.shape)`` float32; moving is the moving image resampled through the
    linear transform. fixed_mask, moving_mask: ``(*grid.shape)`` bool, where each has data (the
    moving one eroded by the descriptor's reach, so zero padding never counts as anatomy).
    fixed_weight, moving_weight: ``(*grid.shape)`` float32 in [0, 1], each image's structure confidence.
    """

    grid: Grid
    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_mask: torch.Tensor
    moving_mask: torch.Tensor
    fixed_weight: torch.Tensor
    moving_weight: torch.Tensor


def pair_features(
    fixed: Image,
    moving: Image,
    linear: AffineTransform,
    spacing_mm: float,
    structure_floor: float,
    equalise: float,
    device: str = "cpu",
) -> PairFeatures:
    """MIND-SSC (one dilation of a working voxel) of ``fixed`` and of ``moving`` seen through ``linear``
    (fixed -> moving), both on the fixed image's working grid of ``spacing_mm``, each
    :func:`equalised` by ``equalise``, with their structure confidences (``structure_floor`` 0:
    weight 1 wherever an image has data)."""
    work = equalised(working_image(fixed, spacing_mm), equalise)
    seen = resample(equalised(moving, equalise), work.grid, linear)
    seen = seen.with_array(seen.array, seen.valid_mask() & fov_mask(seen))
    config = MindConfig(dilations_mm=(spacing_mm,), patch_sigma_mm=0.75 * spacing_mm)
    masks = [torch.from_numpy(im.valid_mask()) for im in (work, seen)]
    return PairFeatures(
        work.grid,
        mind_maps(work, config).to(device),
        mind_maps(seen, config).to(device),
        masks[0].to(device),
        erode(masks[1], _FOOTPRINT_VOX).to(device),
        *(confidence(im, spacing_mm, structure_floor).to(device) for im in (work, seen)),
    )


def equalised(image: Image, share: float) -> Image:
    """``image`` robust-normalised to 0-1, then ``share`` (0-1) of each voxel's value replaced by its
    rank among the image's valid voxels, 0-1 (histogram equalisation); the mask kept."""
    normal = robust_normalize(image)
    x = np.asarray(normal.array, np.float32)
    values = x[normal.valid_mask()]
    if share == 0 or values.size == 0:
        return normal
    ranks = np.linspace(0.0, 1.0, _RANK_LEVELS)
    levels = np.quantile(values[:: max(1, values.size // _RANK_SAMPLES)], ranks)
    levels, first = np.unique(levels, return_index=True)  # a tied value (air, padding) takes its lowest rank
    ranked = np.interp(x, levels, ranks[first]).astype(np.float32)
    return normal.with_array(share * ranked + (1.0 - share) * x, normal.mask)


def confidence(image: Image, sigma_mm: float, floor: float) -> torch.Tensor:
    """Structure confidence ``(*shape)`` in [0, 1] of an image on a working grid (see the module
    docstring; gradient energy smoothed by ``sigma_mm``): 0 outside its mask."""
    x = torch.from_numpy(np.ascontiguousarray(image.array, np.float32))
    mask = torch.from_numpy(image.valid_mask())
    if floor == 0:
        return mask.float()
    energy = sum(g**2 for g in torch.gradient(x))
    energy = gaussian_blur((energy * mask)[None], sigma_mm / image.spacing_mm[0])[0]
    inside = energy[mask]
    if inside.numel() == 0:
        return torch.zeros_like(x)
    tau = floor * torch.quantile(inside[:: max(1, inside.numel() // 100_000)], _FLOOR_QUANTILE)
    tau = tau.clamp(min=1e-3 * float(inside.mean()) + 1e-12)
    return torch.where(mask, energy / (energy + tau), 0.0)


def agreement(pair: PairFeatures) -> float:
    """How well the two images' features agree at the linear result, -1..1: the structure-confidence
    weighted mean cosine of their descriptors, each centred on its channel mean, where both images
    have data (0 without overlap). MR-MR and MR-CT development pairs 0.64-0.88, MR-ultrasound 0.24-0.78."""
    overlap = pair.fixed_mask & pair.moving_mask
    f, m = pair.fixed[:, overlap], pair.moving[:, overlap]
    f, m = f - f.mean(0), m - m.mean(0)
    cosine = (f * m).sum(0) / (f.norm(dim=0) * m.norm(dim=0)).clamp(min=1e-6)
    weight = (pair.fixed_weight * pair.moving_weight)[overlap]
    return float((cosine * weight).sum() / weight.sum()) if float(weight.sum()) > 0 else 0.0


def halved(pair: PairFeatures) -> PairFeatures:
    """``pair`` on a grid of twice the spacing (features averaged over 2^d voxels, masks where most
    voxels hold data): where Adam refines the field, as ConvexAdam does, at an eighth of the cost."""
    shape = pair.fixed.shape[1:]
    pad = [p for n in reversed(shape) for p in (0, n % 2)]
    pool = F.avg_pool3d if len(shape) == 3 else F.avg_pool2d

    def half(x: torch.Tensor) -> torch.Tensor:
        return pool(F.pad(x[None], pad, mode="replicate"), 2)[0]

    spacing = 2.0 * pair.grid.spacing_mm[0]
    corner = pair.grid.index_to_world(np.full((1, len(shape)), 0.5))
    grid = axis_aligned_grid(corner, spacing)
    grid = Grid(tuple((n + 1) // 2 for n in shape), grid.spacing_mm, grid.origin_mm, grid.direction)
    masks = [half(m[None].float())[0] > 0.5 for m in (pair.fixed_mask, pair.moving_mask)]
    weights = [half(w[None])[0] for w in (pair.fixed_weight, pair.moving_weight)]
    return PairFeatures(grid, half(pair.fixed), half(pair.moving), *masks, *weights)
