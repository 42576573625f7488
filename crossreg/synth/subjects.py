"""Synthetic subjects: other heads than the template's, with exact point correspondence to it.

The SynthSeg / SynthMorph recipe on the shipped MNI152: five tissue classes of the template
(:mod:`crossreg.synth.labels`) are carried through a random diffeomorphism of one of several families
plus a random affine (:mod:`crossreg.synth.diffeo`), then painted: a random mean and spread per class,
mixed by the warped probabilities (partial volume), a bias field, a point-spread function with a thick
slice along one random axis (optionally re-gridded there), noise and optionally a field-of-view slab.

``Subject.to_template`` and ``Subject.to_subject`` map world points (mm, LPS) between the subject and
the template, inverse of each other; the subject image at ``x`` shows the template's anatomy at
``to_template(x)``. The geometric work (velocity fields, scaling and squaring, warping the classes,
painting, blurring) is torch on ``device``; bias field, noise and re-gridding reuse
:mod:`crossreg.synth.modality` and :mod:`crossreg.synth.geometry` on the CPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from crossreg.errors import InvalidConfigError
from crossreg.filters import erode, gaussian_blur
from crossreg.image import Grid, Image
from crossreg.resample import grid_points_mm, sample_world
from crossreg.synth.diffeo import (
    FAMILIES,
    Deformation,
    DeformationConfig,
    Family,
    Range,
    check_range,
    random_deformation,
)
from crossreg.synth.geometry import apply_slab, covering_grid, random_slab, resample_anisotropic
from crossreg.synth.labels import CLASSES, LabelConfig, head_labels
from crossreg.synth.modality import add_noise, bias_field

__all__ = [
    "CLASSES",
    "CONTRASTS",
    "FAMILIES",
    "AppearanceConfig",
    "Look",
    "Subject",
    "SubjectConfig",
    "acquire",
    "classes_at",
    "draw_anatomy",
    "draw_look",
    "make_subject",
]

Contrast = Literal["t1", "t2", "ct", "random"]
CONTRASTS: tuple[Contrast, ...] = ("t1", "t2", "ct", "random")
# Classes in order of increasing mean intensity per contrast; unlisted classes draw anywhere in [0, 1].
_ORDER: dict[str, tuple[str, ...]] = {
    "t1": ("csf", "gm", "wm"),
    "t2": ("wm", "gm", "csf"),
    "ct": ("background", "csf", "wm", "gm", "nonbrain"),  # air, fluid, white < grey matter, bone
    "random": (),
}
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class AppearanceConfig:
    """How a subject is painted and acquired; each range is drawn uniformly per subject."""

    min_gap: float = 0.1  # smallest difference between ordered class means (intensities 0-1), 0-0.2
    spread: Range = (0.0, 0.05)  # within-class standard deviation per class, intensities 0-1
    background: Range = (0.0, 0.1)  # air's mean for MR contrasts (t1, t2), intensities 0-1
    bias_strength: Range = (0.0, 0.3)  # largest |log gain| of the bias field (modality.bias_field), 0-1
    blur_mm: Range = (0.0, 0.6)  # isotropic point-spread sigma, mm, 0-3
    slice_mm: Range = (1.0, 4.0)  # slice thickness (profile FWHM) along one random index axis, mm, 0-10
    regrid: bool = False  # also sample at that thickness along that axis (an anisotropic grid)
    noise_sigma: Range = (0.0, 0.03)  # noise std, fraction of the 99th percentile (modality.add_noise), 0-0.3
    fov_fraction: Range = (1.0, 1.0)  # share of the head kept in a random slab (1: all of it), 0.1-1

    def __post_init__(self) -> None:
        check_range("AppearanceConfig", "min_gap", (0.0, self.min_gap), 0.0, 0.2)
        for name, lo, hi in (
            ("spread", 0.0, 1.0),
            ("background", 0.0, 1.0),
            ("bias_strength", 0.0, 1.0),
            ("blur_mm", 0.0, 3.0),
            ("slice_mm", 0.0, 10.0),
            ("noise_sigma", 0.0, 0.3),
            ("fov_fraction", 0.1, 1.0),
        ):
            check_range("AppearanceConfig", name, getattr(self, name), lo, hi)


@dataclass(frozen=True)
class SubjectConfig:
    """Everything that decides a subject besides the seed (:func:`make_subject`)."""

    contrast: Contrast = "random"  # class intensity order: "t1", "t2", "ct", or "random" (any order)
    families: tuple[Family, ...] = FAMILIES  # deformation families, one drawn uniformly per subject
    spacing_mm: float | None = None  # isotropic subject grid spacing, mm (0.5-8); the template's if None
    margin_mm: float = 6.0  # subject grid border around the warped head, mm, >= 0
    labels: LabelConfig = field(
        default_factory=LabelConfig
    )  # the template's classes (skull shell, grid padding)
    deformation: DeformationConfig = field(
        default_factory=DeformationConfig
    )  # one config per family, the affine, the field grid
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)  # intensities and acquisition

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise InvalidConfigError(
                f"contrast {self.contrast!r} is unknown; choose from {', '.join(CONTRASTS)}"
            )
        if not self.families or any(f not in FAMILIES for f in self.families):
            raise InvalidConfigError(f"families {self.families!r}: give a non-empty subset of {FAMILIES}")
        if (self.spacing_mm is not None and not 0.5 <= self.spacing_mm <= 8.0) or self.margin_mm < 0:
            raise InvalidConfigError(
                f"SubjectConfig needs spacing_mm 0.5-8 (or None) and margin_mm >= 0: {self}"
            )


@dataclass(frozen=True, eq=False)
class Subject:
    """A synthetic subject and its exact correspondence to the template.

    image: the subject's scan. tissues: the :data:`CLASSES` probabilities on ``image``'s grid (at its
    voxel centres), summing to 1. deformation: subject <-> template maps. family: its deformation
    family. seed: what reproduces it with the same config.
    """

    image: Image
    tissues: dict[str, Image]
    deformation: Deformation
    family: Family
    seed: int

    def to_template(self, points_mm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Template world points ``(N, 3)`` showing what subject world points ``(N, 3)`` show."""
        return self.deformation.to_template(points_mm)

    def to_subject(self, points_mm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Subject world points ``(N, 3)`` of template world points ``(N, 3)`` (e.g. landmarks)."""
        return self.deformation.to_subject(points_mm)


def class_means(contrast: Contrast, rng: np.random.Generator, config: AppearanceConfig) -> dict[str, float]:
    """Mean intensity (0-1) per class: ordered classes at least ``min_gap`` apart, the rest uniform."""
    means = {k: float(rng.uniform()) for k in CLASSES}
    if contrast in ("t1", "t2"):  # air gives no MR signal
        means["background"] = float(rng.uniform(*config.background))
    order = _ORDER[contrast]
    n = len(order)
    if n:
        spaced = np.sort(rng.uniform(0.0, 1.0 - config.min_gap * (n - 1), n)) + config.min_gap * np.arange(n)
        means.update(zip(order, (float(v) for v in spaced), strict=True))
    return means


def _subject_grid(
    labels: dict[str, Image], deformation: Deformation, spacing_mm: float, margin_mm: float
) -> Grid:
    """The grid (template direction, ``spacing_mm``) covering the subject's head plus ``margin_mm``."""
    head = torch.from_numpy(labels["background"].array < 0.5)
    rim = (head & ~erode(head, 1)).numpy()  # a homeomorphism maps the rim onto the warped head's rim
    grid = labels["background"].grid
    points = deformation.to_subject(grid.index_to_world(np.argwhere(rim)[:, ::-1].astype(float)))
    lo, hi = points.min(axis=0) - margin_mm, points.max(axis=0) + margin_mm
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    return covering_grid(corners, (spacing_mm,) * 3, grid.direction)


def classes_at(labels: dict[str, Image], template_mm: torch.Tensor) -> torch.Tensor:
    """The :data:`CLASSES` probabilities ``(5, *P)`` of ``labels`` at template world points ``(*P, 3)``
    (float32, on their device); sum 1, air outside the labels' grid."""
    inside = torch.from_numpy(np.stack([labels[k].array for k in CLASSES[1:]])).float()
    warped = sample_world(inside.to(template_mm.device), labels["csf"].grid, template_mm.float())
    return torch.cat([(1.0 - warped.sum(dim=0, keepdim=True)).clamp_min(0.0), warped])


def _warp_classes(labels: dict[str, Image], deformation: Deformation, grid: Grid) -> torch.Tensor:
    """The :data:`CLASSES` probabilities ``(5, *grid.shape)`` pulled onto subject ``grid``; sum 1."""
    points = grid_points_mm(grid, deformation.device)
    return classes_at(labels, deformation.template_points(points))


@dataclass(frozen=True)
class Look:
    """The appearance drawn for one subject from :class:`AppearanceConfig`."""

    means: dict[str, float]  # mean intensity per class, 0-1
    spreads: dict[str, float]  # within-class standard deviation per class, 0-1
    slice_axis: int  # index axis of the thick slices: 0 x, 1 y, 2 z
    slice_mm: float  # slice profile FWHM along it, mm
    blur_mm: float  # isotropic point-spread sigma, mm
    bias_strength: float  # largest |log gain| of the bias field
    noise_sigma: float  # noise std, fraction of the 99th percentile
    fov_fraction: float  # share of the head kept in a slab (1: all)
    seeds: tuple[int, ...]  # texture, bias field, noise, slab


def draw_look(contrast: Contrast, config: AppearanceConfig, rng: np.random.Generator) -> Look:
    """One subject's :class:`Look`: class means ordered as ``contrast`` orders them, the rest uniform."""
    means = class_means(contrast, rng, config)
    spreads = dict(zip(CLASSES, (float(v) for v in rng.uniform(*config.spread, len(CLASSES))), strict=True))
    return Look(
        means,
        spreads,
        slice_axis=int(rng.integers(3)),
        slice_mm=float(rng.uniform(*config.slice_mm)),
        blur_mm=float(rng.uniform(*config.blur_mm)),
        bias_strength=float(rng.uniform(*config.bias_strength)),
        noise_sigma=float(rng.uniform(*config.noise_sigma)),
        fov_fraction=float(rng.uniform(*config.fov_fraction)),
        seeds=tuple(int(v) for v in rng.integers(2**31, size=4)),
    )


def _render(probs: torch.Tensor, grid: Grid, look: Look, classes: tuple[str, ...]) -> Image:
    """The subject painted from its ``classes``' probabilities ``(K, *grid.shape)``, blurred and biased.

    Each class's mean plus its spread times one white-noise field, mixed by the probabilities (partial
    volume); then a Gaussian PSF of ``blur_mm`` and a slice profile of FWHM ``slice_mm`` along
    ``slice_axis`` (the voxel's own size counts toward it); then :func:`modality.bias_field`.
    """
    generator = torch.Generator().manual_seed(look.seeds[0])
    noise = torch.randn(probs.shape[1:], generator=generator).to(probs.device)
    mu, sd = (torch.tensor([d[k] for k in classes], device=probs.device) for d in (look.means, look.spreads))
    values = torch.einsum("k...,k->...", probs, mu) + noise * torch.einsum("k...,k->...", probs, sd)
    spacing = np.asarray(grid.spacing_mm, float)
    sigma_mm = np.full(3, look.blur_mm)
    thick = np.sqrt(max(look.slice_mm**2 - spacing[look.slice_axis] ** 2, 0.0)) / _FWHM_PER_SIGMA
    sigma_mm[look.slice_axis] = np.hypot(look.blur_mm, thick)
    sigma_vox = tuple(float(v) for v in (sigma_mm / spacing)[::-1])
    blurred = gaussian_blur(values[None], sigma_vox)[0]
    image = Image(blurred.cpu().numpy(), grid, None, "synthetic subject")
    return bias_field(image, look.bias_strength, look.seeds[1])


def acquire(
    probs_on: Callable[[Grid], torch.Tensor],
    grid: Grid,
    look: Look,
    contrast: Contrast,
    regrid: bool,
    classes: tuple[str, ...] = CLASSES,
) -> tuple[Image, torch.Tensor]:
    """A scan painted from class probabilities ``probs_on(grid)`` ``(len(classes), *grid.shape)`` as
    ``look`` says, and the probabilities on its grid.

    The PSF, thick slices and bias field of :func:`_render`; with ``regrid`` the thick-slice axis
    re-sampled at the slice thickness (``probs_on`` is asked again for that grid); noise (Rician
    unless ``contrast`` is ``"ct"``); the field-of-view slab.
    """
    probs = probs_on(grid)
    image = _render(probs, grid, look, classes)
    if regrid and look.slice_mm > grid.spacing_mm[look.slice_axis]:
        thick = tuple(look.slice_mm if k == look.slice_axis else s for k, s in enumerate(grid.spacing_mm))
        image = resample_anisotropic(image, thick, antialias=False)  # the slice profile is applied already
        probs = probs_on(image.grid)
    image = add_noise(image, look.noise_sigma, look.seeds[2], rician=contrast != "ct")
    if look.fov_fraction < 1.0:
        image = apply_slab(image, random_slab(image, look.fov_fraction, look.seeds[3]))
    return image, probs


def draw_anatomy(
    labels: dict[str, Image], config: SubjectConfig, rng: np.random.Generator, device: torch.device | str
) -> tuple[Family, Deformation, Grid]:
    """A subject's deformation family, its :class:`Deformation` of the template ``labels`` and the
    subject grid covering the warped head, drawn from ``rng``."""
    family = config.families[int(rng.integers(len(config.families)))]
    deformation = random_deformation(labels, family, config.deformation, int(rng.integers(2**31)), device)
    spacing = config.spacing_mm or float(min(labels["csf"].spacing_mm))
    return family, deformation, _subject_grid(labels, deformation, spacing, config.margin_mm)


def make_subject(
    template: Image,
    tissues: dict[str, Image],
    config: SubjectConfig = SubjectConfig(),
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Subject:
    """A random synthetic subject of ``template``, reproducible from ``seed`` on any device.

    template: skull-stripped T1. tissues: ``gm``/``wm`` probability maps (``datasets.mni152_tissues``),
    or all :data:`CLASSES` from :func:`crossreg.synth.labels.head_labels` (computed once for many subjects).
    """
    labels = tissues if set(CLASSES) <= set(tissues) else head_labels(template, tissues, config.labels)
    rng = np.random.default_rng(seed)
    family, deformation, grid = draw_anatomy(labels, config, rng, device)
    look = draw_look(config.contrast, config.appearance, rng)
    image, probs = acquire(
        lambda g: _warp_classes(labels, deformation, g), grid, look, config.contrast, config.appearance.regrid
    )
    maps = {
        k: Image(p.cpu().numpy(), image.grid, None, f"synthetic {k}")
        for k, p in zip(CLASSES, probs, strict=True)
    }
    return Subject(image, maps, deformation, family, seed)
