"""Procedural 2D pictures, drawn in batches on any torch device: fractal noise, random shapes, dead leaves.

They add structure no real image of the pool has (sharp occluding contours at every scale, textures of
every roughness), which the matcher needs to rely on structure rather than on brain anatomy. Every
function takes a ``torch.Generator`` (on the CPU: parameters are drawn there and moved) and returns
``(B, 1, H, W)`` float32 in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Names of the procedural kinds, in the order :func:`procedural` draws them.
KINDS = ("fractal", "shapes", "leaves")


def _rand(gen: torch.Generator, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=gen)


def fractal_noise(batch: int, size: tuple[int, int], gen: torch.Generator, device) -> torch.Tensor:
    """Sums of smooth random fields over octaves with a random spectral slope per image (1/f^beta)."""
    h, w = size
    beta = _rand(gen, batch, 1, 1, 1, low=0.6, high=2.0).to(device)
    out = torch.zeros(batch, 1, h, w, device=device)
    for octave in range(int(math.log2(max(h, w))) - 1):
        cells = 2 ** (octave + 1)
        coarse = torch.randn(batch, 1, cells, cells, generator=gen).to(device)
        layer = F.interpolate(coarse, (h, w), mode="bicubic", align_corners=False)
        out = out + layer * (2.0**-octave) ** beta
    return _unit_range(out)


def _unit_range(x: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-6)


def leaves(
    batch: int,
    size: tuple[int, int],
    count: int,
    radius: tuple[float, float],
    gen: torch.Generator,
    device,
) -> torch.Tensor:
    """Occluding ellipses and rectangles (each a random grey), later ones on top: a dead-leaves picture.

    count: shapes per image; radius: (smallest, largest) half-size as a share of the image, drawn from
    a 1/r^3 law (many small, few large shapes, as in natural images).
    """
    h, w = size
    r_min, r_max = radius
    u = _rand(gen, batch, count, 1, 1)
    half = (r_min**-2 + u * (r_max**-2 - r_min**-2)) ** -0.5 * max(h, w)  # inverse CDF of r^-3
    aspect = _rand(gen, batch, count, 1, 1, low=0.3, high=1.0)
    angle = _rand(gen, batch, count, 1, 1, high=math.pi)
    cx, cy = _rand(gen, batch, count, 1, 1) * w, _rand(gen, batch, count, 1, 1) * h
    boxy = _rand(gen, batch, count, 1, 1) < 0.4
    grey = _rand(gen, batch, count, 1, 1)
    params = [t.to(device) for t in (half, aspect, angle, cx, cy, boxy, grey)]
    half, aspect, angle, cx, cy, boxy, grey = params
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    dx, dy = xs - cx, ys - cy
    a = (dx * torch.cos(angle) + dy * torch.sin(angle)) / half
    b = (-dx * torch.sin(angle) + dy * torch.cos(angle)) / (half * aspect)
    inside = torch.where(boxy, torch.maximum(a.abs(), b.abs()) <= 1, a**2 + b**2 <= 1)  # (B, n, H, W)
    order = torch.arange(1, count + 1, device=device).view(1, count, 1, 1)
    top = (inside * order).amax(dim=1)  # the last shape covering each pixel, 0 for none
    background = _rand(gen, batch, 1, 1, 1).to(device)
    values = torch.cat([background.view(batch, 1), grey.view(batch, count)], dim=1)
    return torch.gather(values, 1, top.view(batch, -1)).view(batch, 1, h, w)


def procedural(batch: int, size: tuple[int, int], gen: torch.Generator, device="cpu") -> torch.Tensor:
    """``(B, 1, H, W)`` pictures, each of a random kind of :data:`KINDS`; shapes and leaves are
    textured with fractal noise so no region is flat."""
    kind = torch.randint(len(KINDS), (batch,), generator=gen)
    texture = fractal_noise(batch, size, gen, device)
    out = texture.clone()
    for k, (count, radius) in ((1, (14, (0.05, 0.35))), (2, (160, (0.01, 0.2)))):
        chosen = torch.nonzero(kind == k)[:, 0].to(device)
        if len(chosen):
            flat = leaves(len(chosen), size, count, radius, gen, device)
            mix = _rand(gen, len(chosen), 1, 1, 1, high=0.5).to(device)
            out[chosen] = (1 - mix) * flat + mix * texture[chosen]
    return out
