"""Synthetic training pairs for the 2D matcher, with exact dense ground truth, in batches on any device.

A pair is made in three steps:

1. **source**: a random crop (zoom, rotation, flip) of a real image of the pool
   (:mod:`crossreg.matcher2d.sources`) or a procedural picture (:mod:`crossreg.matcher2d.procedural`):
   this is ``image1`` before its modality transform;
2. **geometry**: ``image0`` samples the source through a random homography (rotation, scale, shift,
   perspective) plus a smooth elastic displacement. The sampling map itself is the ground truth:
   pixel ``p`` of ``image0`` shows what pixel ``to1[p]`` of ``image1`` shows, exactly (bilinear
   sampling at that very position);
3. **modality**: each image then goes through a modality family (:mod:`crossreg.matcher2d.families`)
   drawn independently: ``image0`` from ``PairConfig.families``, ``image1`` from the same or ``plain``.

Coordinates are pixels ``(x, y)`` with the centre of the top-left pixel at ``(0, 0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crossreg.matcher2d.families import FAMILIES, HELD_OUT_FAMILIES, TRAIN_FAMILIES
from crossreg.matcher2d.procedural import procedural
from crossreg.matcher2d.sources import SourcePool


@dataclass(frozen=True)
class PairConfig:
    """How pairs are drawn. Held-out families (:data:`HELD_OUT_FAMILIES`) are refused when
    ``training`` is set, so a training run cannot see them."""

    size: tuple[int, int] = (256, 256)  # (H, W) of both images, multiples of 8
    families: tuple[str, ...] = TRAIN_FAMILIES  # image0's modality families
    plain_share: float = 0.5  # share of pairs whose image1 is only gamma-adjusted
    real_share: float = 0.7  # share of sources from the real pool (the rest procedural)
    zoom: tuple[float, float] = (0.5, 1.0)  # crop side as a share of the source's shorter side
    rotation_deg: float = 45.0  # image0's rotation about its centre: uniform in +-this
    scale: tuple[float, float] = (0.75, 1.35)  # image0's scale relative to image1
    shift: float = 0.12  # image0's shift, as a share of the image size
    perspective: float = 0.08  # corner displacement of the homography, as a share of the size
    elastic_px: float = 3.0  # largest elastic displacement, pixels
    training: bool = True

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"PairConfig.families: unknown {unknown}; choose from {', '.join(FAMILIES)}")
        held = [f for f in self.families if f in HELD_OUT_FAMILIES]
        if self.training and held:
            raise ValueError(f"families {held} are held out of training (PairConfig.training=True)")
        if any(s % 8 for s in self.size):
            raise ValueError(f"PairConfig.size {self.size}: both sides must be multiples of 8")


@dataclass(frozen=True, eq=False)
class PairBatch:
    """A batch of pairs. image0, image1: ``(B, 1, H, W)`` float in [0, 1]. mask0, mask1: ``(B, 1, H, W)``
    bool, where each holds data. to1: ``(B, H, W, 2)`` pixel ``(x, y)`` in image1 of every pixel of
    image0. valid0: ``(B, H, W)`` bool, pixels of image0 whose match lies in image1's data.
    family0, family1: ``(B,)`` int64 indices into :data:`FAMILIES` (in its order)."""

    image0: torch.Tensor
    image1: torch.Tensor
    mask0: torch.Tensor
    mask1: torch.Tensor
    to1: torch.Tensor
    valid0: torch.Tensor
    family0: torch.Tensor
    family1: torch.Tensor


def pixel_grid(h: int, w: int, device) -> torch.Tensor:
    """``(H, W, 2)`` float pixel centres ``(x, y)``."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys], dim=-1).float()


def sample(images: torch.Tensor, points_px: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``images`` ``(B, C, H, W)`` read at pixel points ``(B, ..., 2)`` (x, y): ``(B, C, ...)``; zero
    outside."""
    h, w = images.shape[-2:]
    scale = torch.tensor([2.0 / w, 2.0 / h], device=points_px.device)
    grid = ((points_px + 0.5) * scale - 1).reshape(points_px.shape[0], -1, 1, 2)
    out = F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode="zeros", align_corners=False)
    return out.reshape(*images.shape[:2], *points_px.shape[1:-1])


def read_at(maps: torch.Tensor, batch: torch.Tensor, points_px: torch.Tensor) -> torch.Tensor:
    """``(M, C)``: per-pixel maps ``(B, H, W, C)`` read bilinearly at pixel points ``(M, 2)`` of image
    ``batch`` ``(M,)`` (points clamped to the image)."""
    h, w = maps.shape[1:3]
    limit = torch.tensor([w - 1, h - 1], device=points_px.device)
    point = torch.minimum(points_px.clamp(min=0), limit)
    low = torch.minimum(point.floor().long(), limit - 1)
    frac = point - low
    out = 0
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        weight = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
        out = out + weight[:, None] * maps[batch, low[:, 1] + dy, low[:, 0] + dx]
    return out


def homographies(b: int, size: tuple[int, int], config: PairConfig, gen: torch.Generator) -> torch.Tensor:
    """``(b, 3, 3)`` maps from image0 pixels to image1 pixels: a similarity about the centre (rotation,
    scale, shift) with each corner then displaced at random (perspective)."""
    h, w = size
    corners = torch.tensor([[0.0, 0.0], [w - 1, 0.0], [w - 1, h - 1], [0.0, h - 1]])
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2])
    angle = math.radians(config.rotation_deg) * (2 * torch.rand(b, generator=gen) - 1)
    low, high = config.scale
    scale = low * (high / low) ** torch.rand(b, generator=gen)
    rot = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], 1)
    rot = rot.view(b, 2, 2) / scale.view(b, 1, 1)  # image0 shows the source scaled by `scale`
    shift = config.shift * (2 * torch.rand(b, 1, 2, generator=gen) - 1) * torch.tensor([w, h])
    jitter = config.perspective * (2 * torch.rand(b, 4, 2, generator=gen) - 1) * torch.tensor([w, h])
    target = (corners - centre) @ rot.transpose(1, 2) + centre + shift + jitter
    return _homography_from_corners(corners.expand(b, 4, 2), target)


def _homography_from_corners(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``(b, 3, 3)`` homographies taking the 4 points ``src`` ``(b, 4, 2)`` to ``dst`` (DLT, h33 = 1)."""
    x, y, u, v = src[..., 0], src[..., 1], dst[..., 0], dst[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1).double()
    rhs = torch.cat([u, v], 1).double()
    h8 = torch.linalg.solve(a, rhs)
    return torch.cat([h8, torch.ones_like(h8[:, :1])], 1).view(-1, 3, 3).float()


def apply_homography(matrix: torch.Tensor, points_px: torch.Tensor) -> torch.Tensor:
    """Pixel points ``(b, ..., 2)`` through homographies ``(b, 3, 3)``."""
    flat = points_px.reshape(points_px.shape[0], -1, 2)
    mapped = flat @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 2]
    denom = flat @ matrix[:, 2:, :2].transpose(1, 2) + matrix[:, None, 2:, 2]
    return (mapped / denom).reshape(points_px.shape)


def elastic(b: int, size: tuple[int, int], max_px: float, gen: torch.Generator, device) -> torch.Tensor:
    """``(b, H, W, 2)`` smooth random displacements (pixels), at most ``max_px`` in each coordinate."""
    coarse = 2 * torch.rand(b, 2, 5, 5, generator=gen) - 1
    field = F.interpolate(coarse.to(device), size, mode="bicubic", align_corners=True)
    return (max_px * field.clamp(-1, 1)).permute(0, 2, 3, 1)


def crop_sources(pool: SourcePool, b: int, config: PairConfig, gen: torch.Generator):
    """``(b, 1, H, W)`` random crops of pool images (zoom, rotation, flip) and their masks."""
    h, w = config.size
    device = pool.images.device
    pick = torch.randint(len(pool), (b,), generator=gen)
    extent = pool.extent.cpu()[pick]  # (b, 2) width, height
    side = extent.min(1).values * (
        config.zoom[0] + (config.zoom[1] - config.zoom[0]) * torch.rand(b, generator=gen)
    )
    angle = 2 * math.pi * torch.rand(b, generator=gen)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    step = side / max(h, w)  # source pixels per output pixel
    rot = torch.stack(
        [torch.cos(angle) * flip, -torch.sin(angle), torch.sin(angle) * flip, torch.cos(angle)], 1
    )
    rot = rot.view(b, 2, 2) * step.view(b, 1, 1)
    centre = side.view(b, 1) / 2 + (extent - side.view(b, 1)) * torch.rand(b, 2, generator=gen)
    out = pixel_grid(h, w, "cpu") - torch.tensor([(w - 1) / 2, (h - 1) / 2])
    where = (out.view(1, -1, 2) @ rot.transpose(1, 2) + centre.view(b, 1, 2)).view(b, h, w, 2)
    inside = ((where >= 0) & (where <= extent.view(b, 1, 1, 2) - 1)).all(-1)
    crops = sample(pool.images[pick.to(device)], where.to(device))
    return crops, inside[:, None].to(device)


def make_pairs(
    pool: SourcePool | None, b: int, config: PairConfig, gen: torch.Generator, device="cpu"
) -> PairBatch:
    """``b`` pairs drawn with ``gen`` (a CPU generator: the same seed gives the same pairs on a device).
    Without a pool (or an empty one) every source is procedural."""
    h, w = config.size
    source = procedural(b, (h, w), gen, device)
    mask = torch.ones(b, 1, h, w, dtype=torch.bool, device=device)
    real = torch.rand(b, generator=gen) < (config.real_share if pool is not None and len(pool) else 0.0)
    chosen = torch.nonzero(real)[:, 0]
    if len(chosen):
        crops, inside = crop_sources(pool, len(chosen), config, gen)
        source[chosen.to(device)], mask[chosen.to(device)] = crops, inside
    matrix = homographies(b, (h, w), config, gen).to(device)
    to1 = apply_homography(matrix, pixel_grid(h, w, device).expand(b, h, w, 2))
    to1 = to1 + elastic(b, (h, w), config.elastic_px, gen, device)
    image0 = sample(source, to1)
    mask0 = sample(mask.float(), to1, mode="nearest") > 0.5
    family0 = _draw_families(b, config.families, gen)
    family1 = torch.where(
        torch.rand(b, generator=gen) < config.plain_share, list(FAMILIES).index("plain"), family0
    )
    image0, mask0 = apply_families(image0, mask0, family0, gen)
    image1, mask1 = apply_families(source, mask, family1, gen)
    inside = ((to1 >= 0) & (to1 <= torch.tensor([w - 1, h - 1], device=device))).all(-1)
    valid0 = mask0[:, 0] & inside & (sample(mask1.float(), to1, mode="nearest")[:, 0] > 0.5)
    return PairBatch(image0, image1, mask0, mask1, to1, valid0, family0, family1)


def _draw_families(b: int, names: tuple[str, ...], gen: torch.Generator) -> torch.Tensor:
    index = torch.tensor([list(FAMILIES).index(n) for n in names])
    return index[torch.randint(len(names), (b,), generator=gen)]


def apply_families(images: torch.Tensor, masks: torch.Tensor, family: torch.Tensor, gen: torch.Generator):
    """Each image through its family of :data:`FAMILIES` (index ``family`` ``(B,)``); images outside
    their mask are set to 0."""
    out, out_mask = images.clone(), masks.clone()
    for k, transform in enumerate(FAMILIES.values()):
        chosen = torch.nonzero(family == k)[:, 0].to(images.device)
        if len(chosen):
            out[chosen], out_mask[chosen] = transform(images[chosen], masks[chosen], gen)
    return out * out_mask, out_mask
