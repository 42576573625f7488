"""Modality transforms of the matcher's training pairs, in named families, batched in torch.

A family turns images ``(b, 1, H, W)`` in [0, 1] and their field-of-view masks ``(b, 1, H, W)`` bool
into another modality's rendering of the same structure. Whole families can be held out of training
and used only to measure zero-shot matching (:data:`HELD_OUT_FAMILIES`):

==========  =====  ==================================================================================
family      split  what it does
==========  =====  ==================================================================================
plain       train  gamma only (the other image of most pairs)
intensity   train  a random non-monotonic intensity map, or an inversion
degrade     train  blur or coarse (anisotropic) pixels, bias field and noise
texture     train  a few intensity classes, each repainted with its own grey and texture (style)
window      train  a narrow intensity window (most of the image saturates, as soft tissue in a
                   bone window), then blur and noise
fov         train  a random intensity map inside an ultrasound-like sector or linear field of view
speckle     train  ultrasound-like: echoes from tissue and boundaries, Rayleigh speckle of random
                   grain, depth attenuation, log compression, inside a sector or linear field of view
edges       held   gradient-magnitude rendering (lines on a flat background, either polarity)
emission    held   emission-tomography-like: uptake by a random map of the tissue, strong blur,
                   Poisson counting noise
==========  =====  ==================================================================================

The sector and linear fields of view are probe beams of :mod:`crossreg.synth.beam`, in pixel units.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from crossreg.filters import gaussian_blur
from crossreg.matcher2d.procedural import fractal_noise
from crossreg.synth.beam import make_beam

Family = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
TRAIN_FAMILIES = ("plain", "intensity", "degrade", "texture", "window", "fov", "speckle")
HELD_OUT_FAMILIES = ("edges", "emission")


def _rand(gen: torch.Generator, n: int, low: float, high: float, device) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=gen)).view(n, 1, 1, 1).to(device)


def _blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    b, c, h, w = x.shape
    return gaussian_blur(x.reshape(b * c, h, w), sigma_px).reshape(b, c, h, w)


def _stretch(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each image scaled so its 1st-99th percentile inside ``mask`` spans [0, 1], then clipped."""
    flat = torch.where(mask, x, torch.nan).flatten(1)
    low = torch.nanquantile(flat, 0.01, dim=1).nan_to_num(0.0).view(-1, 1, 1, 1)
    high = torch.nanquantile(flat, 0.99, dim=1).nan_to_num(1.0).view(-1, 1, 1, 1)
    return ((x - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)


def gradient_magnitude(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``(b, 1, H, W)`` magnitude of the Gaussian-smoothed image's central-difference gradient."""
    smooth = F.pad(_blur(x, sigma_px), (1, 1, 1, 1), mode="replicate")
    gx = (smooth[..., 1:-1, 2:] - smooth[..., 1:-1, :-2]) / 2
    gy = (smooth[..., 2:, 1:-1] - smooth[..., :-2, 1:-1]) / 2
    return torch.sqrt(gx**2 + gy**2 + 1e-12)


def remap(x: torch.Tensor, gen: torch.Generator, knots: int = 6) -> torch.Tensor:
    """A random piecewise-linear intensity map per image: ``knots`` equally spaced knots with uniform
    random values (almost always non-monotonic)."""
    values = torch.rand(x.shape[0], knots, generator=gen).to(x.device)
    position = x.clamp(0, 1).flatten(1) * (knots - 1)
    low = position.floor().long().clamp(max=knots - 2)
    frac = position - low
    out = torch.gather(values, 1, low) * (1 - frac) + torch.gather(values, 1, low + 1) * frac
    return out.view_as(x)


def plain(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Gamma in [0.7, 1.4]."""
    return x.clamp(0, 1) ** _rand(gen, x.shape[0], 0.7, 1.4, x.device), mask


def intensity(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random non-monotonic map (70%) or an inversion with gamma (30%)."""
    invert = (torch.rand(x.shape[0], generator=gen) < 0.3).view(-1, 1, 1, 1).to(x.device)
    inverted = 1 - x.clamp(0, 1) ** _rand(gen, x.shape[0], 0.7, 1.4, x.device)
    return torch.where(invert, inverted, remap(x, gen)), mask


def coarse_pixels(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``x`` sampled on pixels 1-4 times larger along each axis (one factor pair per call), then brought
    back to its grid (nearest or linear, as a viewer shows a low-resolution image)."""
    h, w = x.shape[-2:]
    fy, fx = (1 + 3 * torch.rand(2, generator=gen)).tolist()
    small = F.interpolate(x, size=(max(4, round(h / fy)), max(4, round(w / fx))), mode="area")
    if torch.rand(1, generator=gen) < 0.5:
        return F.interpolate(small, size=(h, w), mode="nearest")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def degrade(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Blur (one sigma in [0.5, 2.5] px per call) or coarse pixels (half the calls), a smooth
    multiplicative bias and Gaussian noise."""
    sigma = float(0.5 + 2.0 * torch.rand(1, generator=gen))
    x = coarse_pixels(x, gen) if torch.rand(1, generator=gen) < 0.5 else _blur(x, sigma)
    bias = 1 + _rand(gen, x.shape[0], 0.0, 0.6, x.device) * (
        fractal_noise(x.shape[0], x.shape[-2:], gen, x.device) - 0.5
    )
    noise = torch.randn(x.shape, generator=gen).to(x.device) * _rand(gen, x.shape[0], 0.01, 0.1, x.device)
    return (x * bias + noise).clamp(0, 1), mask


def texture(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """3-6 intensity classes (random thresholds), each repainted with a random grey plus a random
    amount of fractal texture."""
    b, classes = x.shape[0], 6
    thresholds = torch.sort(torch.rand(b, classes - 1, generator=gen), dim=1).values.to(x.device)
    drop = torch.rand(b, classes - 1, generator=gen).to(x.device) < 0.4  # fewer classes for some images
    thresholds = torch.where(drop, torch.full_like(thresholds, 2.0), thresholds)
    label = (x.flatten(1)[:, :, None] > thresholds[:, None, :]).sum(-1)  # (b, H*W)
    grey = torch.rand(b, classes, generator=gen).to(x.device)
    amount = 0.6 * torch.rand(b, classes, generator=gen).to(x.device)
    noise = fractal_noise(b, x.shape[-2:], gen, x.device).flatten(1) - 0.5
    out = torch.gather(grey, 1, label) + torch.gather(amount, 1, label) * noise
    return _blur(out.view_as(x), 0.7).clamp(0, 1), mask


def window(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A window 0.05-0.3 wide around a random level (everything outside saturates), inverted in a
    quarter of the images, then a light blur and noise."""
    b = x.shape[0]
    width = _rand(gen, b, 0.05, 0.3, x.device)
    level = _rand(gen, b, 0.1, 0.9, x.device)
    out = ((x - level) / width + 0.5).clamp(0, 1)
    invert = (torch.rand(b, generator=gen) < 0.25).view(-1, 1, 1, 1).to(x.device)
    out = _blur(torch.where(invert, 1 - out, out), 0.7)
    noise = torch.randn(x.shape, generator=gen).to(x.device) * _rand(gen, b, 0.0, 0.06, x.device)
    return (out + noise).clamp(0, 1), mask


def probe_field(
    b: int, size: tuple[int, int], gen: torch.Generator, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fields of view of random probe beams (:func:`crossreg.synth.beam.make_beam`, pixel units) from
    above the image: masks ``(b, 1, H, W)`` bool and the depth along the beam, ``(b, 1, H, W)`` in [0, 1]."""
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    points = torch.stack([xs, ys], dim=-1).reshape(-1, 2).float()
    masks, depths = [], []
    for draw in torch.rand(b, 6, generator=gen).numpy():
        tilt = math.radians(30 * (draw[0] - 0.5))
        reach = 0.3 + 0.8 * draw[4]  # depth as a share of the height: small cones to whole images
        apex = np.array([w * (0.3 + 0.4 * draw[1]), h * ((1 - reach) * draw[2] - 0.15 * reach)])
        probe = "linear" if draw[3] < 0.25 else "curvilinear"
        beam = make_beam(
            probe, apex, np.array([math.sin(tilt), math.cos(tilt)]), h * reach,
            50 + 50 * draw[5], w * reach * (0.5 + 0.4 * draw[5]), 4.0,
        )  # fmt: skip
        coords, inside = beam.coordinates(points)
        masks.append(inside.view(1, h, w))
        depths.append(((coords[:, 0] + 1) / 2).clamp(0, 1).view(1, h, w))
    return torch.stack(masks), torch.stack(depths)


def fov(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random intensity map inside a probe's sector or linear field of view (zero outside)."""
    field, _ = probe_field(x.shape[0], x.shape[-2:], gen, x.device)
    return remap(x, gen) * field, mask & field


def edges(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient magnitude (one smoothing in [0.7, 2] px per call), bright or dark lines."""
    sigma = float(0.7 + 1.3 * torch.rand(1, generator=gen))
    lines = _stretch(gradient_magnitude(x, sigma), mask)
    dark = (torch.rand(x.shape[0], generator=gen) < 0.5).view(-1, 1, 1, 1).to(x.device)
    return torch.where(dark, 1 - lines, lines), mask


def speckle(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Ultrasound-like: echogenicity (a random map of the tissue plus its boundaries) times Rayleigh
    speckle (grain 0.7-3 px, one per call), attenuated with depth and log-compressed, inside a
    probe's field of view."""
    b, device = x.shape[0], x.device
    field, depth = probe_field(b, x.shape[-2:], gen, device)
    echo = 0.5 * remap(x, gen) + _stretch(gradient_magnitude(x, 1.0), mask)
    phasor = torch.randn(2 * b, 1, *x.shape[-2:], generator=gen).to(device)
    phasor = _blur(phasor, float(0.7 + 2.3 * torch.rand(1, generator=gen)))
    rayleigh = torch.sqrt(phasor[:b] ** 2 + phasor[b:] ** 2) / phasor.std().clamp_min(1e-6)
    attenuation = torch.exp(-_rand(gen, b, 0.5, 2.5, device) * depth)
    gain = _rand(gen, b, 10.0, 60.0, device)
    out = torch.log1p(gain * echo * rayleigh * attenuation) / torch.log1p(gain * 2)
    return out.clamp(0, 1) * field, mask & field


def emission(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Emission-tomography-like: uptake by a random map of the tissue, blurred (sigma 2-4 px, one per
    call), then Poisson counts (10-200 at the brightest pixel) scaled back to [0, 1]."""
    b = x.shape[0]
    uptake = _blur(remap(x, gen), float(2.0 + 2.0 * torch.rand(1, generator=gen))).clamp(0, 1)
    peak = _rand(gen, b, 10.0, 200.0, x.device)
    counts = torch.poisson((uptake * peak).cpu(), generator=gen).to(x.device)
    return (counts / peak).clamp(0, 1), mask


FAMILIES: dict[str, Family] = {
    "plain": plain,
    "intensity": intensity,
    "degrade": degrade,
    "texture": texture,
    "window": window,
    "fov": fov,
    "speckle": speckle,
    "edges": edges,
    "emission": emission,
}
