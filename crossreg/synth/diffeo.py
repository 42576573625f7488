"""Diffeomorphic deformations from a template to synthetic subjects, in world mm (LPS), in torch.

A subject sees the template through ``to_template = phi o A``: a random affine ``A`` (head size, pose:
subject world -> an affinely normalised space) and then ``phi = exp(v)``, the flow for unit time of a
smooth stationary velocity field ``v`` on an axis-aligned grid over the template (scaling and
squaring: ``v / 2**steps`` composed with itself ``steps`` times). A flow of a smooth field never
folds, and no point moves further than ``max |v|``. ``to_subject`` is the exact inverse: ``exp(-v)``
gives a first guess, fixed-point iterations on ``phi`` make ``to_template(to_subject(y)) == y`` to
under 0.01 mm, then ``A^-1``.

Directions, as in :class:`crossreg.synth.elastic.ElasticWarp`: :meth:`Deformation.warp` *pulls*: the
subject image at point ``x`` shows the template at ``to_template(x)``; template landmarks ``y`` sit
at ``to_subject(y)`` in the subject.

Families (so evaluation can hold one out of training):

- ``"global"``: noise smoothed over 40-60 mm (Gaussian sigma, what :func:`random_elastic` calls
  ``control_spacing_mm``), largest displacement in the head 8-12 mm (brain shape);
- ``"regional"``: noise smoothed over 15-25 mm, 4-6 mm (lobar and gyral variation);
- ``"atrophy"``: tissue retracting from every CSF boundary (ventricle walls pushed outward 2-4 mm,
  the pial surface pulled inward 0.5-1.5 mm over a few mm of cortex): enlarged ventricles and sulci;
  largest displacement 2-5.5 mm.

Every field is smoothly tapered to zero over ``margin_mm`` at the border of its grid, so ``phi`` is
the identity outside the grid and continuous everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from crossreg.errors import InvalidConfigError
from crossreg.filters import dilate, erode, gaussian_blur
from crossreg.image import Grid, Image, axis_aligned_grid
from crossreg.resample import grid_points_mm, sample_world
from crossreg.synth.elastic import random_elastic
from crossreg.synth.geometry import random_affine
from crossreg.transform import AffineTransform

Family = Literal["global", "regional", "atrophy"]
FAMILIES: tuple[Family, ...] = ("global", "regional", "atrophy")
Range = tuple[float, float]


def check_range(owner: str, name: str, bounds: Range, lo: float, hi: float) -> None:
    """Raise InvalidConfigError unless ``lo <= bounds[0] <= bounds[1] <= hi``."""
    if not lo <= bounds[0] <= bounds[1] <= hi:
        raise InvalidConfigError(f"{owner}.{name} {bounds}: expected low <= high within [{lo:g}, {hi:g}]")


@dataclass(frozen=True)
class SmoothFieldConfig:
    """A random smooth velocity field (families ``global``, ``regional``); values drawn uniformly."""

    smoothing_mm: Range = (40.0, 60.0)  # noise sigma (random_elastic's control_spacing_mm), mm, 5-100
    max_displacement_mm: Range = (8.0, 12.0)  # largest displacement inside the head, mm, 0-30

    def __post_init__(self) -> None:
        check_range("SmoothFieldConfig", "smoothing_mm", self.smoothing_mm, 5.0, 100.0)
        check_range("SmoothFieldConfig", "max_displacement_mm", self.max_displacement_mm, 0.0, 30.0)


@dataclass(frozen=True)
class AtrophyConfig:
    """Tissue retracting from CSF (family ``atrophy``); ranges drawn uniformly."""

    ventricle_mm: Range = (2.0, 4.0)  # outward push of the ventricle walls, mm, 0-10
    cortex_mm: Range = (0.5, 1.5)  # tissue pulled away from every CSF boundary (cortical thinning), mm, 0-5
    ventricle_sigma_mm: float = 8.0  # reach of the ventricular expansion (Gaussian sigma), mm, > 0
    cortex_sigma_mm: float = 3.0  # reach of the retraction into the tissue (Gaussian sigma), mm, > 0
    deep_mm: float = 10.0  # CSF deeper than this inside the CSF+GM+WM region counts as ventricles, mm

    def __post_init__(self) -> None:
        check_range("AtrophyConfig", "ventricle_mm", self.ventricle_mm, 0.0, 10.0)
        check_range("AtrophyConfig", "cortex_mm", self.cortex_mm, 0.0, 5.0)
        if min(self.ventricle_sigma_mm, self.cortex_sigma_mm, self.deep_mm) <= 0:
            raise InvalidConfigError(f"AtrophyConfig needs positive sigmas and deep_mm: {self}")


@dataclass(frozen=True)
class AffineConfig:
    """The random affine on top of every family (:func:`crossreg.synth.geometry.random_affine`)."""

    max_scale: float = 0.12  # each axis scaled by up to 1 +- this (head sizes differ), 0-0.3
    max_shear: float = 0.05  # off-diagonal shear terms up to this, 0-0.2
    max_angle_deg: float = 10.0  # rotation about a random axis, up to this, degrees, 0-45
    max_translation_mm: float = 10.0  # shift of the head centre, up to this, mm, >= 0

    def __post_init__(self) -> None:
        ok = 0 <= self.max_scale <= 0.3 and 0 <= self.max_shear <= 0.2 and 0 <= self.max_angle_deg <= 45
        if not ok or self.max_translation_mm < 0:
            raise InvalidConfigError(
                f"AffineConfig out of range (scale 0-0.3, shear 0-0.2, 0-45 deg): {self}"
            )


def _regional() -> SmoothFieldConfig:
    return SmoothFieldConfig(smoothing_mm=(15.0, 25.0), max_displacement_mm=(4.0, 6.0))


@dataclass(frozen=True)
class DeformationConfig:
    """One config per family, the affine on top, and the grid the fields live on."""

    global_field: SmoothFieldConfig = field(default_factory=SmoothFieldConfig)  # 40-60 mm, up to 8-12 mm
    regional_field: SmoothFieldConfig = field(default_factory=_regional)  # 15-25 mm, up to 4-6 mm
    atrophy: AtrophyConfig = field(default_factory=AtrophyConfig)
    affine: AffineConfig = field(default_factory=AffineConfig)
    spacing_mm: float = 4.0  # spacing of the velocity/displacement grid, mm, 1-8
    margin_mm: float = 30.0  # the grid extends this beyond the labels; fields taper to zero across it, mm
    steps: int = 6  # scaling and squaring: v / 2**steps is composed with itself steps times, 4-12

    def __post_init__(self) -> None:
        if not (
            1.0 <= self.spacing_mm <= 8.0 and self.margin_mm >= 2 * self.spacing_mm and 4 <= self.steps <= 12
        ):
            raise InvalidConfigError(
                f"DeformationConfig needs spacing_mm 1-8, margin_mm >= 2 spacings, steps 4-12: {self}"
            )


@dataclass(frozen=True, eq=False)
class Deformation:
    """``to_template = phi o affine``; ``to_subject`` its inverse (see the module notes).

    affine: subject world -> affinely normalised world. grid: axis-aligned field grid, template world mm.
    forward_mm, inverse_mm: ``(3, *grid.shape)`` displacements (world x, y, z) of ``phi`` and ``phi^-1``.
    """

    affine: AffineTransform
    grid: Grid
    forward_mm: torch.Tensor
    inverse_mm: torch.Tensor
    family: Family

    @property
    def device(self) -> torch.device:
        return self.forward_mm.device

    def _phi(self, points: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        return points + sample_world(field, self.grid, points).movedim(0, -1)

    def template_points(self, points_mm: torch.Tensor) -> torch.Tensor:
        """``to_template`` of subject points ``(*P, 3)`` as a tensor on the deformation's device."""
        return self._phi(affine_points(points_mm, self.affine), self.forward_mm)

    def subject_points(self, points_mm: torch.Tensor, iterations: int = 4) -> torch.Tensor:
        """``to_subject`` of template points ``(*P, 3)`` as a tensor on the deformation's device."""
        z = self._phi(points_mm, self.inverse_mm)
        for _ in range(iterations):  # phi's displacement varies slowly (|grad u| < 1): a contraction
            z = z - (self._phi(z, self.forward_mm) - points_mm)
        return affine_points(z, self.affine.inverse())

    def to_template(self, points_mm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Template world points ``(N, 3)`` of subject world points ``(N, 3)`` (numpy or torch, kept)."""
        return map_points(self.template_points, points_mm, self.device)

    def to_subject(self, points_mm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Subject world points ``(N, 3)`` of template world points ``(N, 3)`` (numpy or torch, kept)."""
        return map_points(self.subject_points, points_mm, self.device)

    def warp(self, volume: torch.Tensor, source: Grid, target: Grid) -> torch.Tensor:
        """Template volume ``(C, *source.shape)`` pulled onto subject grid ``target``: ``(C, *target.shape)``,
        ``out(x) = volume(to_template(x))``, linear, zero outside ``source``."""
        points = grid_points_mm(target, self.device).to(volume.dtype)
        return sample_world(volume.to(self.device), source, self.template_points(points))

    def jacobian_determinant(self) -> torch.Tensor:
        """``det D(to_template)`` at the field grid's points ``A(x)``, ``grid.shape``: > 0: no folding."""
        grads = _gradient(self.forward_mm, self.grid.spacing_mm[0])  # (3 components, 3 axes, *shape)
        jac = grads.movedim(0, -1).movedim(0, -1) + torch.eye(3, dtype=grads.dtype, device=grads.device)
        return torch.linalg.det(jac) * float(np.linalg.det(self.affine.matrix))


def affine_points(points: torch.Tensor, t: AffineTransform) -> torch.Tensor:
    """``t`` applied to world points ``(*P, d)``, in their dtype and on their device."""
    m = torch.as_tensor(t.matrix, dtype=points.dtype, device=points.device)
    return points @ m.T + torch.as_tensor(t.translation_mm, dtype=points.dtype, device=points.device)


def map_points(fn, points_mm: np.ndarray | torch.Tensor, device: torch.device) -> np.ndarray | torch.Tensor:
    """``fn`` applied in float64 on ``device``; the result in the input's type, dtype and device."""
    if isinstance(points_mm, torch.Tensor):
        return fn(points_mm.to(device, torch.float64)).to(points_mm.device, points_mm.dtype)
    return fn(torch.as_tensor(np.asarray(points_mm, float), device=device)).cpu().numpy()


def _gradient(field: torch.Tensor, spacing_mm: float) -> torch.Tensor:
    """Spatial gradient ``(C, 3, *shape)`` of ``(C, *shape)`` on an identity-direction grid (x, y, z)."""
    d_zyx = torch.gradient(field, spacing=spacing_mm, dim=(1, 2, 3))
    return torch.stack(d_zyx[::-1], dim=1)


def exponentiate(velocity_mm: torch.Tensor, grid: Grid, steps: int) -> torch.Tensor:
    """Displacement ``(3, *grid.shape)`` of ``exp(v)`` for a velocity ``(3, *grid.shape)`` (world mm)."""
    points = grid_points_mm(grid, velocity_mm.device).to(velocity_mm.dtype)
    u = velocity_mm / 2**steps
    for _ in range(steps):  # phi_2t(x) = phi_t(phi_t(x)) = x + u(x) + u(x + u(x))
        u = u + sample_world(u, grid, points + u.movedim(0, -1))
    return u


def _taper(grid: Grid, margin_mm: float, device: torch.device) -> torch.Tensor:
    """Window ``grid.shape``: 1 deeper than ``margin_mm`` in the grid, falling smoothly to 0 at its border."""
    w = torch.ones(grid.shape, device=device)
    for axis, n in enumerate(grid.shape):
        i = torch.arange(n, device=device, dtype=torch.float32)
        t = (torch.minimum(i, n - 1 - i) * grid.spacing_mm[::-1][axis] / margin_mm).clamp(0.0, 1.0)
        w = w * (t * t * (3 - 2 * t)).reshape([-1 if k == axis else 1 for k in range(3)])
    return w


def _unit_max(field: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """``field`` ``(3, *shape)`` scaled so its largest norm (within ``region``, if given) is 1."""
    norm = field.norm(dim=0)
    peak = norm[region] if region is not None and bool(region.any()) else norm
    return field / peak.max().clamp_min(1e-12)


def _draw(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _smooth_velocity(grid: Grid, head: torch.Tensor, cfg: SmoothFieldConfig, rng: np.random.Generator):
    """Random velocity ``(3, *grid.shape)``; no point of ``head`` moves further than a drawn maximum.

    The field is scaled by its largest norm within that maximum of the head: a trajectory can leave
    the head, never that neighbourhood, so the bound holds and is nearly reached.
    """
    blank = Image(np.zeros(grid.shape, np.float32), grid)  # random_elastic reads only the grid
    warp = random_elastic(blank, 1.0, _draw(rng, cfg.smoothing_mm), int(rng.integers(2**31)))
    largest = _draw(rng, cfg.max_displacement_mm)
    control = torch.from_numpy(warp.displacement_mm).float().to(head.device)
    v = sample_world(control, warp.grid, grid_points_mm(grid, head.device))
    reach = dilate(head, math.ceil(largest / grid.spacing_mm[0]))
    return _unit_max(v, reach) * largest


def _atrophy_velocity(grid: Grid, classes: dict[str, torch.Tensor], cfg: AtrophyConfig, rng):
    """Velocity ``(3, *grid.shape)`` of ``to_template`` that enlarges the ventricles and sulci."""
    h = grid.spacing_mm[0]
    tissue, csf = classes["gm"] + classes["wm"], classes["csf"]
    deep = erode((csf + tissue) > 0.5, max(1, round(cfg.deep_mm / h)))
    ventricles = ((csf > 0.5) & deep).float()[None]
    push = -_gradient(gaussian_blur(ventricles, cfg.ventricle_sigma_mm / h), h)[0]
    smooth = gaussian_blur(tissue[None], cfg.cortex_sigma_mm / h)
    pull = _gradient(smooth, h)[0] * smooth
    # push and pull move template points in the subject (outward from the ventricles, into the
    # tissue); to_template flows the other way.
    return -(_unit_max(push) * _draw(rng, cfg.ventricle_mm) + _unit_max(pull) * _draw(rng, cfg.cortex_mm))


def random_deformation(
    labels: dict[str, Image],
    family: Family,
    config: DeformationConfig = DeformationConfig(),
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Deformation:
    """A random :class:`Deformation` of ``family`` over template ``labels`` (:func:`head_labels`).

    Randomness is drawn on the CPU from ``seed``, so a seed gives the same subject on any device.
    """
    if family not in FAMILIES:
        raise InvalidConfigError(
            f"deformation family {family!r} is unknown; choose from {', '.join(FAMILIES)}"
        )
    rng = np.random.default_rng(seed)
    source = labels["csf"].grid
    grid = axis_aligned_grid(_expanded_corners(source, config.margin_mm), config.spacing_mm)
    names = ("csf", "gm", "wm", "nonbrain")
    stack = torch.from_numpy(np.stack([labels[k].array for k in names])).float().to(device)
    on_field = sample_world(stack, source, grid_points_mm(grid, device))
    classes = dict(zip(names, on_field, strict=True))
    if family == "atrophy":
        velocity = _atrophy_velocity(grid, classes, config.atrophy, rng)
    else:
        cfg = config.global_field if family == "global" else config.regional_field
        velocity = _smooth_velocity(grid, on_field.sum(dim=0) > 0.5, cfg, rng)
    velocity = velocity * _taper(grid, config.margin_mm, velocity.device)
    a = config.affine
    affine = random_affine(
        3,
        _draw(rng, (0.0, a.max_angle_deg)),
        _draw(rng, (0.0, a.max_translation_mm)),
        a.max_scale,
        a.max_shear,
        source.center_mm(),
        int(rng.integers(2**31)),
    )
    forward, inverse = (exponentiate(s * velocity, grid, config.steps) for s in (1.0, -1.0))
    return Deformation(affine, grid, forward, inverse, family)


def _expanded_corners(grid: Grid, margin_mm: float) -> np.ndarray:
    """The two corners ``(2, 3)`` of ``grid``'s world bounding box moved out by ``margin_mm``."""
    corners = grid.corners_mm()
    return np.stack([corners.min(axis=0) - margin_mm, corners.max(axis=0) + margin_mm])
