"""Synthetic modalities from a T1-weighted MRI: T2-like, CT-like, random intensity look-up tables
(the MatchAnything / SynthMorph idea: a matcher trained on them cannot rely on intensity), the 2D
matcher's modality families (:func:`family_like`), and the acquisition corruptions every modality
shares (bias field, noise, blur).

Each function gives back a new Image on the input grid (``ct_like`` enlarges it to fit the skull)
and draws its randomness from an explicit ``seed``; configs hold physically meaningful ranges.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from crossreg.errors import InvalidConfigError, InvalidImageError
from crossreg.filters import gaussian_blur
from crossreg.image import Image, fov_mask, robust_normalize
from crossreg.imageio import to_sitk
from crossreg.matcher2d.families import FAMILIES
from crossreg.resample import on_grid
from crossreg.synth.geometry import pad

Range = tuple[float, float]


@dataclass(frozen=True)
class T2Config:
    """Tissue signals of :func:`t2_like`, each drawn uniformly from its (low, high) range.

    Signals are relative T2-weighted intensities (0-1). Defaults follow 1.5-3 T T2w contrast: CSF
    much brighter than grey matter, grey brighter than white.
    """

    csf: Range = (0.85, 1.0)  # cerebrospinal fluid
    gm: Range = (0.45, 0.6)  # grey matter
    wm: Range = (0.25, 0.38)  # white matter


@dataclass(frozen=True)
class CTConfig:
    """Tissue values and head layers of :func:`ct_like`; a (low, high) range is drawn uniformly."""

    # Hounsfield units (HU) per tissue.
    csf_hu: Range = (0.0, 15.0)  # also fills the gap between the brain and the skull
    gm_hu: Range = (35.0, 45.0)
    wm_hu: Range = (22.0, 30.0)
    bone_hu: Range = (1200.0, 1800.0)  # the skull's inner and outer tables; the diploe between is darker
    soft_tissue_hu: Range = (30.0, 60.0)  # scalp
    air_hu: float = -1000.0
    # Layers outside the brain mask, and the grid around them, in mm.
    csf_gap_mm: float = 1.5  # CSF/meninges between the brain-mask surface and the skull's inner table
    skull_mm: Range = (5.0, 7.0)  # skull thickness
    scalp_mm: float = 5.0  # soft tissue outside the skull
    pad_mm: float = 16.0  # margin added to the grid so the layers fit around a tightly cropped brain
    blur_mm: float = 0.5  # Gaussian sigma of the scanner's point-spread function


@dataclass(frozen=True)
class CorruptionConfig:
    """Acquisition corruptions of :func:`corrupt`, each strength drawn uniformly from its range."""

    # Largest |log gain| of a smooth multiplicative bias field over the signal (0.3: gains 0.74-1.35).
    bias_strength: Range = (0.0, 0.3)
    # Noise standard deviation as a fraction of the image's robust maximum (99th percentile).
    noise_sigma: Range = (0.0, 0.03)
    blur_mm: Range = (0.0, 1.0)  # Gaussian blur sigma, mm
    rician: bool = True  # magnitude-image (Rician) noise as in MRI; False: additive Gaussian as in CT


def _draw(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _class_centres(values: np.ndarray, iters: int = 30) -> np.ndarray:
    """Sorted centres ``(3,)`` of a 1D k-means (CSF, GM, WM on a T1) over ``values`` ``(N,)``."""
    hist, edges = np.histogram(values, bins=256)
    mids = (edges[:-1] + edges[1:]) / 2
    c = np.percentile(values, [15.0, 50.0, 85.0])
    for _ in range(iters):
        label = np.argmin(np.abs(mids[:, None] - c[None]), axis=1)
        weight = np.bincount(label, weights=hist, minlength=3)
        c = np.where(
            weight > 0, np.bincount(label, weights=hist * mids, minlength=3) / np.maximum(weight, 1), c
        )
    return np.sort(c)


def _soften(mask: np.ndarray) -> np.ndarray:
    """``mask`` as float32 averaged over 3-voxel boxes: a partial-volume edge instead of a step."""
    pool = F.avg_pool3d if mask.ndim == 3 else F.avg_pool2d
    x = torch.from_numpy(mask.astype(np.float32))[None, None]
    return pool(x, 3, stride=1, padding=1, count_include_pad=False)[0, 0].numpy()


def as_probability(tissue_map: Image) -> Image:
    """A tissue map in [0, 1]: maps stored as 0-255 (as the MNI152 files are) are divided by 255."""
    peak = float(np.nanmax(tissue_map.array))
    return tissue_map.with_array(tissue_map.array / 255.0) if 1.001 < peak <= 255.0 else tissue_map


def tissue_fractions(
    t1: Image, tissues: dict[str, Image] | None = None, head: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Soft ``csf``, ``gm``, ``wm`` fractions (float32 arrays of ``t1``'s shape) summing to the head.

    head: boolean head mask (``fov_mask(t1)`` if None). With ``tissues`` (``gm``, ``wm`` probability
    maps in [0, 1], any grid) CSF is what is left of the head; without, fractions are hat functions of
    T1 intensity between the k-means class centres, i.e. a piecewise-linear look-up table on the T1.
    """
    head = fov_mask(t1) if head is None else head
    soft = _soften(head)
    if tissues is not None:
        gm, wm = (np.clip(on_grid(tissues[k], t1.grid), 0.0, None) for k in ("gm", "wm"))
        if max(gm.max(), wm.max()) > 1.001:
            raise InvalidImageError("tissue maps must be probabilities in [0, 1]; divide 0-255 maps by 255")
        return {"csf": np.clip(soft - gm - wm, 0.0, 1.0), "gm": gm * soft, "wm": wm * soft}
    centres = _class_centres(t1.array[head])
    hats = np.eye(3, dtype=np.float32)
    return {
        k: soft * np.interp(t1.array, centres, hats[i]).astype(np.float32)
        for i, k in enumerate(("csf", "gm", "wm"))
    }


def t2_like(
    t1: Image, tissues: dict[str, Image] | None = None, seed: int = 0, config: T2Config = T2Config()
) -> Image:
    """A T2-weighted-looking image of the head in ``t1``: CSF bright, grey matter mid, white dark.

    Uses the ``gm``/``wm`` probability maps when given, else a non-monotonic look-up table on the T1.
    Values in [0, 1], zero outside the head; same grid as ``t1``.
    """
    rng = np.random.default_rng(seed)
    frac = tissue_fractions(t1, tissues)
    value = {"csf": _draw(rng, config.csf), "gm": _draw(rng, config.gm), "wm": _draw(rng, config.wm)}
    return t1.with_array(sum(frac[k] * value[k] for k in frac), t1.mask)


def ct_like(
    t1: Image, tissues: dict[str, Image] | None = None, seed: int = 0, config: CTConfig = CTConfig()
) -> Image:
    """A CT-looking image in Hounsfield units built around the brain in ``t1``, on a padded grid.

    What it approximates: brain soft tissue nearly flat (GM ~40, WM ~26, CSF ~8 HU), a bone shell at a
    fixed distance outside the head mask (bright inner/outer tables, darker diploe), a scalp layer and
    air (-1000 HU). It assumes a skull-stripped brain (like the shipped MNI152): a whole-head T1 would
    get its skull outside the scalp. The skull is a smooth offset surface, not real bone anatomy (no
    skull base, sinuses or vessels), so it tests cross-modal matching, not CT realism.
    """
    rng = np.random.default_rng(seed)
    big = pad(t1, config.pad_mm)
    head = pad(t1.with_array(fov_mask(t1)), config.pad_mm).array > 0.5
    frac = tissue_fractions(big, tissues, head)
    hu = {"csf": _draw(rng, config.csf_hu), "gm": _draw(rng, config.gm_hu), "wm": _draw(rng, config.wm_hu)}
    brain = sum(frac[k] * hu[k] for k in frac)
    head = sum(frac.values())
    dist = _distance_outside_mm(big, head)
    skull = _draw(rng, config.skull_mm)
    u = np.clip((dist - config.csf_gap_mm) / skull, 0.0, 1.0)
    bone = _draw(rng, config.bone_hu) * (1.0 - 0.5 * np.sin(np.pi * u))  # diploe darker than the tables
    outer = config.csf_gap_mm + skull
    outside = np.select(
        [dist <= config.csf_gap_mm, dist <= outer, dist <= outer + config.scalp_mm],
        [hu["csf"], bone, _draw(rng, config.soft_tissue_hu)],
        config.air_hu,
    )
    return blur(big.with_array(brain + (1.0 - head) * outside, big.mask), config.blur_mm)


def _distance_outside_mm(image: Image, mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (mm) of each voxel centre to ``mask``, zero inside it."""
    itk = to_sitk(image.with_array(mask.astype(np.float32)))
    binary = sitk.Cast(itk > 0.5, sitk.sitkUInt8)
    dist = sitk.SignedMaurerDistanceMap(
        binary, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return np.clip(sitk.GetArrayFromImage(dist), 0.0, None)


def random_lut_curve(seed: int = 0, n_knots: int = 8, n_samples: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """A random smooth non-monotonic intensity curve on [0, 1]: inputs and outputs, ``(n_samples,)`` each.

    ``n_knots`` equally spaced knots take uniform random values (redrawn while monotonic), joined
    linearly and smoothed by a Gaussian of a quarter knot spacing, which keeps every extremum.
    """
    if n_knots < 3:
        raise ValueError(f"random_lut: a non-monotonic curve needs at least 3 knots, got {n_knots}")
    rng = np.random.default_rng(seed)
    y = rng.uniform(0.0, 1.0, n_knots)
    while np.all(np.diff(y) >= 0) or np.all(np.diff(y) <= 0):
        y = rng.uniform(0.0, 1.0, n_knots)
    x = np.linspace(0.0, 1.0, n_samples)
    curve = np.interp(x, np.linspace(0.0, 1.0, n_knots), y)
    sigma = 0.25 * (n_samples - 1) / (n_knots - 1)
    t = np.arange(-int(3 * sigma), int(3 * sigma) + 1)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    smooth = np.convolve(np.pad(curve, t.size // 2, mode="edge"), kernel / kernel.sum(), mode="valid")
    return x, smooth


def random_lut(image: Image, seed: int = 0, n_knots: int = 8) -> Image:
    """``image`` with robust-normalised intensities remapped by :func:`random_lut_curve`; values in [0, 1]."""
    x, y = random_lut_curve(seed, n_knots)
    return image.with_array(np.interp(robust_normalize(image).array, x, y), image.mask)


def family_like(image: Image, family: str, seed: int = 0) -> Image:
    """``image`` rendered by one of the 2D matcher's modality families
    (:data:`crossreg.matcher2d.families.FAMILIES`, e.g. ``edges``, ``emission``); values in [0, 1].

    The family sees the robust-normalised intensities and the image's mask, as a training pair's image
    (its blurs and grains are in pixels of ``image``); a family with a probe field of view (``fov``,
    ``speckle``) comes back masked to it. 2D images only: the families are.
    """
    if family not in FAMILIES:
        raise InvalidConfigError(f"modality family {family!r} is unknown; choose from {', '.join(FAMILIES)}")
    if image.ndim != 2:
        raise InvalidImageError(
            f"modality family {family!r} renders 2D images (the 2D matcher's families); got a "
            f"{image.ndim}D image: use a slice"
        )
    x = torch.from_numpy(robust_normalize(image).array)[None, None]
    mask = torch.from_numpy(image.valid_mask().copy())[None, None]
    out, out_mask = FAMILIES[family](x, mask, torch.Generator().manual_seed(seed))
    rendered, valid = (out * out_mask)[0, 0].numpy(), out_mask[0, 0].numpy()
    return image.with_array(rendered, None if valid.all() and image.mask is None else valid)


def blur(image: Image, sigma_mm: float) -> Image:
    """``image`` smoothed by an isotropic Gaussian of ``sigma_mm`` (world mm, any spacing)."""
    if sigma_mm <= 0:
        return image
    x = torch.from_numpy(np.ascontiguousarray(image.array, np.float32))[None]
    sigma_vox = tuple(sigma_mm / s for s in image.spacing_mm[::-1])
    return image.with_array(gaussian_blur(x, sigma_vox)[0].numpy(), image.mask)


def bias_field(image: Image, strength: float, seed: int = 0, order: int = 2) -> Image:
    """``image`` times a smooth gain ``exp(f)``: ``f`` a random polynomial of degree ``order`` in the
    voxel coordinates (scaled to [-1, 1]) with ``max |f| = strength`` over the voxels with signal."""
    rng = np.random.default_rng(seed)
    axes = [
        np.linspace(-1.0, 1.0, n).reshape([-1 if i == k else 1 for i in range(image.ndim)])
        for k, n in enumerate(image.array.shape)
    ]
    powers = [p for p in itertools.product(range(order + 1), repeat=image.ndim) if 0 < sum(p) <= order]
    log_gain = np.zeros(image.array.shape)
    for p in powers:
        log_gain = log_gain + rng.standard_normal() * math.prod(a**e for a, e in zip(axes, p, strict=True))
    magnitude = np.abs(image.array)
    signal = image.valid_mask() & (magnitude > 0.05 * np.percentile(magnitude, 99))
    reference = log_gain[signal] if signal.any() else log_gain
    log_gain *= strength / max(float(np.abs(reference).max()), 1e-12)
    return image.with_array(image.array * np.exp(log_gain), image.mask)


def add_noise(image: Image, sigma: float, seed: int = 0, rician: bool = True) -> Image:
    """``image`` plus noise of std ``sigma`` x its 99th percentile (Rician magnitude or Gaussian).

    Voxels outside the mask stay as they are (there is no data to corrupt).
    """
    rng = np.random.default_rng(seed)
    valid = image.valid_mask()
    s = sigma * float(np.percentile(np.abs(image.array[valid]), 99)) if valid.any() else 0.0
    n1, n2 = rng.normal(0.0, s, (2, *image.array.shape))
    noisy = np.hypot(image.array + n1, n2) if rician else image.array + n1
    return image.with_array(np.where(valid, noisy, image.array), image.mask)


def corrupt(image: Image, config: CorruptionConfig = CorruptionConfig(), seed: int = 0) -> Image:
    """``image`` blurred, bias-modulated, then noised, with strengths drawn from ``config``."""
    rng = np.random.default_rng(seed)
    sub = rng.integers(0, 2**31, 2)
    image = blur(image, _draw(rng, config.blur_mm))
    image = bias_field(image, _draw(rng, config.bias_strength), int(sub[0]))
    return add_noise(image, _draw(rng, config.noise_sigma), int(sub[1]), config.rician)
