"""Synthetic brain shift and soft-tissue deformation: how tissue moves between the preoperative image
and the intraoperative one, with exact point correspondences.

Everything is built in the preoperative (fixed) frame, world mm (LPS). A :class:`Shift` carries the
tissue found at ``x`` to ``S(x) = x + u(x)``; the intraoperative anatomy is the preoperative one pulled
through ``S^-1`` (:meth:`Shift.warp`: it shows at ``y`` the tissue from ``S^-1(y)``). A rigid motion
``R`` then carries the whole scene into the moving image, so a fixed point ``p`` lies at ``R(S(p))``
there: ``DeformableTransform(linear=R, field=u)``. (In moving space the shift is ``R S R^-1``; building
it in the fixed frame puts the truth's field on a grid over the fixed image, where it belongs.)

Components (:data:`SHIFT_KINDS`), each a compactly supported smooth velocity field, so each is
localised and the identity far from its site:

- ``sag``: gravity under a craniotomy (a random site on the upward-facing brain surface): tissue
  sinks along gravity (the inward normal, leaning up to ``gravity_tilt_deg``), most at the surface,
  fading with depth and distance as ``(1 - r^2/R^2)^3``; 2-15 mm;
- ``swell``: outward expansion around a point 10-30 mm under the craniotomy; 2-8 mm;
- ``resect``: a ball of tissue just under the surface beside the craniotomy's centre removed and
  filled with fluid (anechoic in ultrasound, half the time with a bright rim; CSF in MR-like and
  CT-like images), the tissue around it collapsing into it by 2-4 mm; no landmark is drawn in or
  next to the cavity;
- ``soft``: CT <-> MR soft-tissue deformation: a random smooth field around a random brain point,
  3-10 mm.

``S = exp(v)`` for ``v`` the sum of the components' velocities (scaling and squaring, as
:mod:`crossreg.synth.diffeo`): the flow of a smooth field never folds (:meth:`Shift.jacobian_determinant`
> 0). Each component is scaled so that alone its flow's largest displacement is the magnitude drawn
for it; together they move no point further than ``max_total_mm``. ``S^-1`` is ``exp(-v)`` refined by
fixed-point iterations. Fields are computed on the box around the supports, then placed on the grid
over the image (zero elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from crossreg.deformation import DeformableTransform
from crossreg.errors import InvalidConfigError
from crossreg.image import Grid, Image, axis_aligned_grid, fov_mask
from crossreg.resample import grid_points_mm, sample_world
from crossreg.synth.beam import probe_pose_on_surface, tilt
from crossreg.synth.diffeo import Range, check_range, exponentiate
from crossreg.synth.elastic import random_elastic
from crossreg.transform import AffineTransform

ShiftKind = Literal["sag", "swell", "resect", "soft"]
SHIFT_KINDS: tuple[ShiftKind, ...] = ("sag", "swell", "resect", "soft")
#: ``|x - c| (1 - |x - c|^2 / R^2)^3`` peaks at this fraction of ``R``: where swelling pushes and a
#: cavity's wall collapses most.
RADIAL_PEAK = 1.0 / math.sqrt(7.0)
#: A velocity field evaluated on a grid: ``(d, *grid.shape)`` float64, world mm.
Velocity = Callable[[Grid], torch.Tensor]


@dataclass(frozen=True)
class ShiftConfig:
    """Ranges of :func:`random_shift`, each drawn uniformly. Magnitudes are largest displacements."""

    sag_mm: Range = (2.0, 15.0)  # sinking along gravity under the craniotomy, mm, 0-30
    sag_radius_mm: Range = (60.0, 90.0)  # reach of the sag around the craniotomy (support radius), mm
    gravity_tilt_deg: float = 25.0  # gravity leans from the craniotomy's inward normal by up to this, deg
    swell_mm: Range = (2.0, 8.0)  # outward push of a swelling, mm, 0-30
    swell_radius_mm: Range = (40.0, 70.0)  # its support radius (the push peaks at 0.38 of it), mm
    swell_depth_mm: Range = (10.0, 30.0)  # depth of its centre under the craniotomy, mm
    cavity_radius_mm: Range = (5.0, 10.0)  # resection cavity: a ball just under the surface, mm
    cavity_offset_mm: Range = (0.0, 10.0)  # gap between the cavity and the craniotomy's centre, mm
    collapse_mm: Range = (2.0, 4.0)  # inward collapse of the tissue around the cavity, mm, 0-30
    rim_probability: float = 0.5  # chance of a bright cavity rim in ultrasound (blood, haemostat), 0-1
    rim_mm: float = 1.5  # thickness of that rim, mm
    soft_mm: Range = (3.0, 10.0)  # soft-tissue deformation between CT and MR, mm, 0-30
    soft_radius_mm: Range = (30.0, 60.0)  # its support radius around a random brain point, mm
    soft_smoothing_mm: Range = (15.0, 30.0)  # smoothness of its random directions (Gaussian sigma), mm
    max_total_mm: float = 15.0  # all components together move no point further, mm
    landmark_min_mm: float = 1.0  # case landmarks lie where the tissue moved at least this far, mm
    spacing_mm: float = 2.0  # spacing of the displacement grid, mm, 0.5-8
    steps: int = 6  # scaling and squaring: v / 2**steps composed with itself steps times, 4-12

    def __post_init__(self) -> None:
        for name in ("sag_mm", "swell_mm", "collapse_mm", "soft_mm"):
            check_range("ShiftConfig", name, getattr(self, name), 0.0, 30.0)
        for name in ("sag_radius_mm", "swell_radius_mm", "soft_radius_mm", "soft_smoothing_mm"):
            check_range("ShiftConfig", name, getattr(self, name), 5.0, 150.0)
        check_range("ShiftConfig", "swell_depth_mm", self.swell_depth_mm, 0.0, 80.0)
        check_range("ShiftConfig", "cavity_radius_mm", self.cavity_radius_mm, 1.0, 40.0)
        check_range("ShiftConfig", "cavity_offset_mm", self.cavity_offset_mm, 0.0, 50.0)
        ok = 0.0 <= self.rim_probability <= 1.0 and self.rim_mm > 0 and self.max_total_mm > 0
        ok = ok and self.landmark_min_mm >= 0 and 0.0 <= self.gravity_tilt_deg <= 90.0
        if not (ok and 0.5 <= self.spacing_mm <= 8.0 and 4 <= self.steps <= 12):
            raise InvalidConfigError(
                "ShiftConfig needs rim_probability 0-1, rim_mm > 0, max_total_mm > 0, landmark_min_mm >= 0, "
                f"gravity_tilt_deg 0-90, spacing_mm 0.5-8, steps 4-12: {self}"
            )


@dataclass(frozen=True, eq=False)
class Shift:
    """Tissue motion ``S(x) = x + u(x)`` in the preoperative frame (module notes).

    grid: axis-aligned, over the image and every support. forward_mm, inverse_mm: ``(d, *grid.shape)``
    float64 displacements (world x, y, z) of ``S`` and ``S^-1``, zero outside the supports.
    magnitudes_mm: each component's largest displacement alone (before the ``max_total_mm`` cap on
    them together). craniotomy_mm, inward: ``(d,)`` site
    on the brain surface and unit inward normal. cavity_center_mm: ``(d,)`` after the shift, or None.
    """

    grid: Grid
    forward_mm: torch.Tensor
    inverse_mm: torch.Tensor
    magnitudes_mm: dict[str, float]
    craniotomy_mm: np.ndarray
    inward: np.ndarray
    cavity_center_mm: np.ndarray | None = None
    cavity_radius_mm: float = 0.0
    rim_mm: float = 0.0

    def displacement(self, points_mm: np.ndarray) -> np.ndarray:
        """``u(p)`` ``(N, d)`` at world points ``(N, d)``."""
        pts = torch.as_tensor(np.asarray(points_mm, float))
        return sample_world(self.forward_mm, self.grid, pts).T.numpy()

    def apply(self, points_mm: np.ndarray) -> np.ndarray:
        """``S(p)``: where the tissue at world points ``(N, d)`` goes, ``(N, d)``."""
        return np.asarray(points_mm, float) + self.displacement(points_mm)

    def source_points(self, points: torch.Tensor) -> torch.Tensor:
        """``S^-1(y)`` of shifted-frame points ``(*P, d)`` (float64 tensor): where their tissue was."""
        return points + sample_world(self.inverse_mm, self.grid, points).movedim(0, -1)

    def warp(self, image: Image) -> Image:
        """``image`` pulled through the shift on its own grid: ``W(y) = image(S^-1(y))``, mask alike."""
        source = self.source_points(grid_points_mm(image.grid, dtype=torch.float64))
        valid = image.valid_mask().astype(np.float32)
        stacked = torch.from_numpy(np.stack([np.asarray(image.array, np.float32), valid])).double()
        values = sample_world(stacked, image.grid, source)
        mask = None if image.mask is None else values[1].numpy() > 0.999
        return Image(values[0].float().numpy(), image.grid, mask, image.source)

    def pull_mask(self, mask: np.ndarray, grid: Grid) -> np.ndarray:
        """Preoperative-frame mask on ``grid``: True where ``mask`` (shifted frame, on ``grid``) holds
        the tissue, i.e. at ``p`` with ``mask(S(p))`` (linearly interpolated, over one half)."""
        points = grid_points_mm(grid, dtype=torch.float64)
        moved = points + sample_world(self.forward_mm, self.grid, points).movedim(0, -1)
        values = sample_world(torch.from_numpy(np.asarray(mask, np.float64))[None], grid, moved)
        return values[0].numpy() > 0.5

    def in_cavity(self, points_mm: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
        """Boolean ``(N,)``: which shifted-frame points ``(N, d)`` lie within ``margin_mm`` of the cavity."""
        if self.cavity_center_mm is None:
            return np.zeros(len(points_mm), bool)
        dist = np.linalg.norm(np.asarray(points_mm, float) - self.cavity_center_mm, axis=1)
        return dist < self.cavity_radius_mm + margin_mm

    def transform(self, linear: AffineTransform) -> DeformableTransform:
        """The fixed -> moving truth when ``linear`` then moves the shifted scene: ``linear(S(p))``."""
        return DeformableTransform.from_displacement(linear, self.forward_mm, self.grid)

    def jacobian_determinant(self) -> torch.Tensor:
        """``det DS`` at the grid nodes, ``grid.shape``: > 0 everywhere means no folding."""
        d = self.grid.ndim
        grads = torch.gradient(self.forward_mm, spacing=self.grid.spacing_mm[0], dim=tuple(range(1, d + 1)))
        jac = torch.stack(grads[::-1], dim=1)  # (component, world axis x, y, z, *shape)
        eye = torch.eye(d, dtype=jac.dtype)
        return torch.linalg.det(jac.movedim(0, -1).movedim(0, -1) + eye)


@dataclass(frozen=True)
class _Component:
    """One velocity field: ``velocity(grid)`` ``(d, *grid.shape)`` zero outside the ball (centre, radius)."""

    name: ShiftKind
    center_mm: np.ndarray
    radius_mm: float
    magnitude_mm: float
    velocity: Velocity


def _bump(grid: Grid, center_mm: np.ndarray, radius_mm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 - |x - c|^2 / R^2)^3`` inside the ball, 0 outside (C2 smooth), ``grid.shape``, and the
    offsets ``x - c`` ``(d, *grid.shape)``, float64."""
    offset = (grid_points_mm(grid, dtype=torch.float64) - torch.as_tensor(center_mm)).movedim(-1, 0)
    s = (offset**2).sum(0) / radius_mm**2
    return (1.0 - s).clamp_min(0.0) ** 3, offset


def _translation(direction: np.ndarray, center_mm: np.ndarray, radius_mm: float) -> Velocity:
    def velocity(grid: Grid) -> torch.Tensor:
        weight, _ = _bump(grid, center_mm, radius_mm)
        return torch.as_tensor(direction).reshape(-1, *[1] * grid.ndim) * weight

    return velocity


def _radial(center_mm: np.ndarray, radius_mm: float, sign: float) -> Velocity:
    def velocity(grid: Grid) -> torch.Tensor:
        weight, offset = _bump(grid, center_mm, radius_mm)
        return sign * offset / radius_mm * weight

    return velocity


def _random_directions(center_mm: np.ndarray, radius_mm: float, smoothing_mm: float, seed: int) -> Velocity:
    box = Grid(
        (2,) * len(center_mm),
        (2.0 * radius_mm,) * len(center_mm),
        tuple(center_mm - radius_mm),
        np.eye(len(center_mm)),
    )  # random_elastic reads only the grid: its noise is fixed over the ball, whatever grid samples it
    warp = random_elastic(Image(np.zeros(box.shape, np.float32), box), 1.0, smoothing_mm, seed)
    noise = torch.from_numpy(warp.displacement_mm)

    def velocity(grid: Grid) -> torch.Tensor:
        weight, _ = _bump(grid, center_mm, radius_mm)
        return sample_world(noise, warp.grid, grid_points_mm(grid, dtype=torch.float64)) * weight

    return velocity


def _draw(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _components(
    image: Image, kinds: set[str], cfg: ShiftConfig, rng: np.random.Generator
) -> tuple[list[_Component], np.ndarray, np.ndarray]:
    """The drawn components (in :data:`SHIFT_KINDS` order), the craniotomy site and inward normal."""
    site, inward = probe_pose_on_surface(image, int(rng.integers(2**31)), max_tilt_deg=0.0)
    parts = []
    if "sag" in kinds:
        gravity = tilt(inward, _draw(rng, (0.0, cfg.gravity_tilt_deg)), rng)
        radius = _draw(rng, cfg.sag_radius_mm)
        parts.append(
            _Component("sag", site, radius, _draw(rng, cfg.sag_mm), _translation(gravity, site, radius))
        )
    if "swell" in kinds:
        center = site + _draw(rng, cfg.swell_depth_mm) * inward
        radius = _draw(rng, cfg.swell_radius_mm)
        parts.append(
            _Component("swell", center, radius, _draw(rng, cfg.swell_mm), _radial(center, radius, 1.0))
        )
    if "resect" in kinds:
        cavity = _draw(rng, cfg.cavity_radius_mm)
        # Beside the craniotomy's centre, where the probe sits: ultrasound sees the cavity and the
        # tissue under the craniotomy, not only through the fluid.
        lateral = cavity + _draw(rng, cfg.cavity_offset_mm)
        # A third of the way aside deeper: the convex surface falls away from the craniotomy.
        center = site + (cavity + lateral / 3.0) * inward + lateral * tilt(inward, 90.0, rng)
        radius = cavity / RADIAL_PEAK  # the collapse peaks at the cavity's wall
        parts.append(
            _Component("resect", center, radius, _draw(rng, cfg.collapse_mm), _radial(center, radius, -1.0))
        )
    if "soft" in kinds:
        center = _brain_point(image, rng)
        radius, smoothing = _draw(rng, cfg.soft_radius_mm), _draw(rng, cfg.soft_smoothing_mm)
        velocity = _random_directions(center, radius, smoothing, int(rng.integers(2**31)))
        parts.append(_Component("soft", center, radius, _draw(rng, cfg.soft_mm), velocity))
    return parts, site, inward


def _brain_point(image: Image, rng: np.random.Generator) -> np.ndarray:
    """A random world point ``(d,)`` of the image's signal (:func:`crossreg.image.fov_mask`)."""
    candidates = np.flatnonzero(fov_mask(image))
    idx = np.unravel_index(int(rng.choice(candidates)), image.array.shape)
    return image.grid.index_to_world(np.array(idx[::-1], float)[None])[0]


def _largest(velocity: torch.Tensor, grid: Grid, steps: int) -> float:
    """The largest displacement (mm) of the flow of ``velocity`` ``(d, *grid.shape)`` at the grid nodes."""
    return float(exponentiate(velocity, grid, steps).norm(dim=0).max())


def _fit(field: torch.Tensor, target_mm: float, grid: Grid, steps: int, iterations: int = 3) -> float:
    """The factor that makes the largest displacement of the flow of ``field`` ``target_mm``."""
    scale = target_mm / float(field.norm(dim=0).max().clamp_min(1e-12))
    for _ in range(iterations):  # the largest displacement grows almost linearly with the scale
        scale *= target_mm / max(_largest(scale * field, grid, steps), 1e-9)
    return scale


def _scaled_velocity(parts: list[_Component], field: Grid, sub: Grid, cfg: ShiftConfig) -> torch.Tensor:
    """The sum of the components' velocities on ``sub``, ``(d, *sub.shape)``, each scaled to its
    magnitude. Each scale is fitted on the field grid's nodes
    over the component's ball, every ``k``-th with ``k`` the spacings in a 16th of its radius (the
    exact nodes for small, sharp fields), so magnitudes hold to under 1%."""
    weights = []
    for p in parts:
        stride = max(1, int(p.radius_mm / (16.0 * field.spacing_mm[0])))
        nodes, _ = _box_grid(field, p.center_mm - p.radius_mm, p.center_mm + p.radius_mm, stride)
        weights.append(_fit(p.velocity(nodes), p.magnitude_mm, nodes, cfg.steps))

    return sum(w * p.velocity(sub) for w, p in zip(weights, parts, strict=True))


def _box_grid(grid: Grid, lo_mm: np.ndarray, hi_mm: np.ndarray, stride: int = 1) -> tuple[Grid, tuple]:
    """Every ``stride``-th node of axis-aligned ``grid`` over the world box ``lo_mm``..``hi_mm`` ``(d,)``
    plus a node, as a Grid, and that box of ``grid`` as array slices."""
    lo = np.maximum(np.floor(grid.world_to_index(lo_mm[None])[0]).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(grid.world_to_index(hi_mm[None])[0]).astype(int) + 2, grid.size_xyz)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1], strict=True))
    origin = grid.index_to_world(lo[None].astype(float))[0]
    shape = tuple(int(n) for n in -(-(hi - lo) // stride))[::-1]
    spacing = tuple(stride * s for s in grid.spacing_mm)
    return Grid(shape, spacing, tuple(float(o) for o in origin), grid.direction), box


def _field_grid(image: Image, parts: list[_Component], spacing_mm: float) -> tuple[Grid, Grid, tuple]:
    """The field grid (over the image and every support), the sub-grid on the supports' box (the same
    nodes) and that box as array slices."""
    boxes = np.concatenate([np.stack([p.center_mm - p.radius_mm, p.center_mm + p.radius_mm]) for p in parts])
    grid = axis_aligned_grid(np.concatenate([image.grid.corners_mm(), boxes]), spacing_mm)
    sub, box = _box_grid(grid, boxes.min(axis=0), boxes.max(axis=0))
    return grid, sub, box


def _inverse(velocity: torch.Tensor, forward: torch.Tensor, grid: Grid, steps: int) -> torch.Tensor:
    """Displacement ``(d, *grid.shape)`` of ``S^-1`` at the nodes ``y``: ``A = exp(-v)`` is nearly the
    inverse, so ``z <- z + A(y) - A(S(z))`` (whose Jacobian is ``I - DA DS ~ 0``, even where the tissue
    is compressed) converges in a few steps."""
    approx = exponentiate(-velocity, grid, steps)
    points = grid_points_mm(grid, dtype=torch.float64)

    def a(x: torch.Tensor) -> torch.Tensor:
        return x + sample_world(approx, grid, x).movedim(0, -1)

    target, z = a(points), a(points)
    for _ in range(4):
        z = z + target - a(z + sample_world(forward, grid, z).movedim(0, -1))
    return (z - points).movedim(-1, 0)


def random_shift(
    image: Image, kinds: Sequence[ShiftKind], config: ShiftConfig = ShiftConfig(), seed: int = 0
) -> Shift:
    """A random :class:`Shift` of ``image``'s tissue made of ``kinds`` (:data:`SHIFT_KINDS`).

    The craniotomy is a random site on the image's upward-facing signal surface (3D; any surface in
    2D). The same ``seed`` and kinds give the same shift; kinds are drawn in :data:`SHIFT_KINDS` order.
    """
    unknown = set(kinds) - set(SHIFT_KINDS)
    if unknown or not kinds:
        raise InvalidConfigError(
            f"shift kinds {sorted(unknown) or 'none'}: choose one or more of {', '.join(SHIFT_KINDS)}"
        )
    rng = np.random.default_rng(seed)
    parts, site, inward = _components(image, set(kinds), config, rng)
    grid, sub, box = _field_grid(image, parts, config.spacing_mm)
    velocity = _scaled_velocity(parts, grid, sub, config)
    flow = exponentiate(velocity, sub, config.steps)
    for _ in range(3):  # together no further than max_total_mm: scale down (almost linear), re-check
        largest = float(flow.norm(dim=0).max())
        if largest <= config.max_total_mm:
            break
        velocity = velocity * (0.999 * config.max_total_mm / largest)
        flow = exponentiate(velocity, sub, config.steps)
    forward, inverse = (torch.zeros((image.ndim, *grid.shape), dtype=torch.float64) for _ in range(2))
    forward[(slice(None), *box)] = flow
    inverse[(slice(None), *box)] = _inverse(velocity, flow, sub, config.steps)
    shift = Shift(grid, forward, inverse, {p.name: p.magnitude_mm for p in parts}, site, inward)
    cavity = next((p for p in parts if p.name == "resect"), None)
    if cavity is None:
        return shift
    rim = config.rim_mm if rng.uniform() < config.rim_probability else 0.0
    center = shift.apply(cavity.center_mm[None])[0]
    return replace(
        shift, cavity_center_mm=center, cavity_radius_mm=cavity.radius_mm * RADIAL_PEAK, rim_mm=rim
    )
