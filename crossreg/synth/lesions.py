"""Synthetic lesions that grow, shrink, move and push tissue: longitudinal pairs with exact lesion tracks.

A baseline scan is a synthetic subject (:mod:`crossreg.synth.subjects`) with lesions painted in: balls
in grey or white matter, each an extra tissue class (a core and a rim of their own intensities)
replacing what it occupies. The follow-up scan is the same anatomy later: every lesion's radius
multiplied by a growth factor, the tissue around it pushed by the change, the lesion moved off its
centre (eccentric growth; with the push, the :class:`MassEffect`), the whole brain changed a little
non-rigidly, the head moved by a random rigid motion, and all of it painted with a new look.

The push of one lesion (centre ``c``, radius ``r0`` becoming ``r1``) is radial: a point at distance
``r`` from ``c`` moves to distance ``r * r1 / r0`` inside the lesion and to ``r + (r1 - r0) w((r - r0)
/ L)`` outside it, where ``w`` falls smoothly from 1 to 0 (``1 - 3t^2 + 2t^3``) and ``L`` is the
reach. Tissue at the boundary moves by exactly the radius change; beyond ``r0 + L`` nothing moves. The
radius never decreases along a ray (``L`` above 1.5 (r1 - r0); the config asks for 2): a
diffeomorphism off the boundary sphere, continuous with a positive Jacobian everywhere. Then the shift
(``LesionConfig.shift_mm``, a random direction): ``p -> p + s w((|p - c| - r1) / S)``; the grown
lesion moves whole by ``s`` and the tissue around it less, nothing beyond ``r1 + S``. Its Jacobian
determinant is at least ``1 - 1.5 |s| / S`` (1.5 the largest slope of ``w``), positive as the config
demands. The lesions' maps are composed in order, each centred where its lesion's centre is after the
earlier ones, so a neighbour's maps can move a lesion's centre too.

The brain's longitudinal change ``phi`` (``FollowupConfig.change``) is a smooth random field of the
``regional`` family of :mod:`crossreg.synth.diffeo` (a flow, so it never folds) drawn over the
baseline head, smoothed over 20-30 mm, largest displacement 3-6 mm. ``baseline_to_followup(p) =
R(phi(M(p)))`` (``M`` the lesions' maps, ``R`` the motion); its inverse undoes each step: ``phi`` by
fixed-point iterations, the shift and the radial push by Newton's method, all to under 1e-9 mm. The
lesions' shifts and the change are drawn from their own random stream, so a pair with both off is the
pair made without them.

Calibration (``scripts/calibrate_followup.py``, 12 pairs, 56 lesions): the best affine fit of the
baseline brain to its follow-up places misses the lesion centres by 0.04 mm on average with pushes
alone, 3.2 mm with the shifts (1.5-5 mm), 1.3 mm with the change alone and 3.6 mm (median 3.6, 90th
percentile 5.1) with both, the defaults: affine transfer of lesions between real scans leaves about
4 mm, as lesions grow eccentrically and the brain shifts and shrinks between the scans.

Both scans are pulled through the maps: the follow-up at ``q`` shows the baseline's tissue (lesions
included) at ``followup_to_baseline(q)``, so every point, on or off a lesion, has exact truth; a
lesion's track is its baseline centre mapped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from crossreg.errors import EmptyRegionError, InvalidConfigError
from crossreg.image import Grid, Image
from crossreg.imageio import save
from crossreg.outputs import atomic_write_text, check_outputs
from crossreg.resample import grid_points_mm
from crossreg.synth.diffeo import (
    AffineConfig,
    Deformation,
    DeformationConfig,
    Range,
    SmoothFieldConfig,
    affine_points,
    check_range,
    map_points,
    random_deformation,
)
from crossreg.synth.geometry import covering_grid, random_rigid
from crossreg.synth.labels import head_labels, signed_distance_mm
from crossreg.synth.subjects import (
    CLASSES,
    CONTRASTS,
    AppearanceConfig,
    Contrast,
    Look,
    SubjectConfig,
    acquire,
    classes_at,
    draw_anatomy,
    draw_look,
)
from crossreg.transform import AffineTransform

LESION_CLASSES = ("lesion", "rim")  # the core and its rim, after the head's CLASSES
LONGITUDINAL_FILES = ("baseline.nii.gz", "followup.nii.gz", "lesions_baseline.csv", "lesions_followup.csv")
PointMap = Callable[[torch.Tensor], torch.Tensor]  # points (M, 3) -> their images (M, 3)
_NEWTON_STEPS = 5  # inverting the radial push: 4 reach 1e-13 of the radius for every allowed config
_SHIFT_STEPS = 16  # inverting the shift: 12 reach 1e-12 mm even at the folding limit (tested)
_FALL_SLOPE_MAX = 1.5  # max |w'| of the fall-off w (at t = 1/2)
_CHANGE_STEPS = 16  # inverting the change: fixed point contracting by |grad u| (about 0.2); 12 reach 1e-13 mm


@dataclass(frozen=True)
class LesionConfig:
    """How many lesions, how big, how they change and push; ranges drawn uniformly per lesion."""

    count: tuple[int, int] = (3, 6)  # lesions per subject, low-high inclusive, 1-20
    radius_mm: Range = (3.0, 10.0)  # baseline radius, mm, 0.5-40
    growth: Range = (0.5, 1.8)  # follow-up radius / baseline radius, 0.2-3 (below 1: shrinking)
    reach: Range = (2.0, 3.0)  # the push fades to 0 this many baseline radii beyond the boundary, 0.5-10
    rim: Range = (0.15, 0.3)  # rim thickness, fraction of the radius, 0-0.5
    rim_offset: Range = (0.05, 0.15)  # |rim mean - core mean| (sign random), intensities 0-1, 0-0.5
    min_contrast: float = 0.15  # the core's mean at least this far from grey and white matter's, 0-0.2
    gap_mm: float = 2.0  # smallest distance between two lesions at their larger radii, mm, >= 0
    # Eccentric growth: the lesion, at its follow-up radius, moves this far (random direction), mm, 0-10.
    # 1.5-5 mm: with FollowupConfig.change, affine transfer misses lesion centres by about 3.5 mm, as
    # between real scans (module notes). (0, 0): concentric growth only.
    shift_mm: Range = (1.5, 5.0)
    # The shift fades to 0 this far beyond the follow-up boundary, mm, 1-100; at least 1.5 times the
    # largest shift (the map would fold otherwise), and longer keeps neighbouring lesions round.
    shift_reach_mm: Range = (12.0, 20.0)

    def __post_init__(self) -> None:
        lo, hi = self.count
        if not 1 <= lo <= hi <= 20 or not 0.0 <= self.min_contrast <= 0.2 or self.gap_mm < 0:
            raise InvalidConfigError(
                f"LesionConfig needs count 1-20, min_contrast 0-0.2, gap_mm >= 0: {self}"
            )
        for name, low, high in (
            ("radius_mm", 0.5, 40.0),
            ("growth", 0.2, 3.0),
            ("reach", 0.5, 10.0),
            ("rim", 0.0, 0.5),
            ("rim_offset", 0.0, 0.5),
            ("shift_mm", 0.0, 10.0),
            ("shift_reach_mm", 1.0, 100.0),
        ):
            check_range("LesionConfig", name, getattr(self, name), low, high)
        if self.reach[0] < 2.0 * (self.growth[1] - 1.0):
            raise InvalidConfigError(
                f"LesionConfig: reach {self.reach[0]:g} radii is too short for growth up to "
                f"{self.growth[1]:g} (the push would fold tissue); give reach >= 2 (growth - 1)"
            )
        if self.shift_mm[1] * _FALL_SLOPE_MAX >= self.shift_reach_mm[0]:
            raise InvalidConfigError(
                f"LesionConfig: shift_reach_mm {self.shift_reach_mm[0]:g} is too short for shifts up to "
                f"{self.shift_mm[1]:g} mm (the shift would fold tissue); give shift_reach_mm > 1.5 shift_mm"
            )


def _change_field() -> SmoothFieldConfig:
    return SmoothFieldConfig(smoothing_mm=(20.0, 30.0), max_displacement_mm=(3.0, 6.0))


@dataclass(frozen=True)
class FollowupConfig:
    """The follow-up scan: its own rigid motion and look, and how the lesions change."""

    max_angle_deg: float = 12.0  # rotation about a random axis through the head centre, up to this, 0-45
    max_translation_mm: float = 15.0  # shift of the head, up to this, mm, 0-100
    contrast: Contrast | None = None  # the follow-up's contrast (subjects.CONTRASTS); the baseline's if None
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)  # intensities and acquisition
    lesions: LesionConfig = field(default_factory=LesionConfig)  # the lesions of both scans
    # The brain's longitudinal change: a smooth random displacement over smoothing_mm 20-30 mm, largest
    # 3-6 mm in the head (max_displacement_mm (0, 0): none). With the lesions' shifts, an affine fit
    # of the brain misses the lesion centres by 3.6 mm on average, as between real scans (module notes).
    change: SmoothFieldConfig = field(default_factory=_change_field)

    def __post_init__(self) -> None:
        if not 0 <= self.max_angle_deg <= 45 or not 0 <= self.max_translation_mm <= 100:
            raise InvalidConfigError(
                f"FollowupConfig needs max_angle_deg 0-45, max_translation_mm 0-100: {self}"
            )
        if self.contrast not in (None, *CONTRASTS):
            raise InvalidConfigError(
                f"follow-up contrast {self.contrast!r} is unknown; choose from {', '.join(CONTRASTS)}"
            )


def _fall(t: torch.Tensor) -> torch.Tensor:
    """1 at ``t <= 0``, 0 at ``t >= 1``, smooth (flat at both ends) between."""
    t = t.clamp(0.0, 1.0)
    return 1.0 - t * t * (3.0 - 2.0 * t)


def _fall_slope(t: torch.Tensor) -> torch.Tensor:
    """Derivative of :func:`_fall` in ``t``."""
    t = t.clamp(0.0, 1.0)
    return -6.0 * t * (1.0 - t)


def _near(points: torch.Tensor, centre: torch.Tensor, reach: float) -> torch.Tensor:
    """Indices ``(M,)`` of the points ``(N, 3)`` in the cube of half-width ``reach`` about ``centre``."""
    near = ((points[:, 0] - centre[0]).abs() <= reach).nonzero().squeeze(1)
    for axis in (1, 2):  # the few left after each axis
        near = near[(points[near, axis] - centre[axis]).abs() <= reach]
    return near


def _push(d: torch.Tensor, r0: float, r1: float, reach: float) -> torch.Tensor:
    """Offsets ``(M, 3)`` from a lesion's centre after its radial push (module notes)."""
    r = d.norm(dim=-1, keepdim=True)
    outside = (r + (r1 - r0) * _fall((r - r0) / reach)) / r.clamp_min(1e-12)
    return d * torch.where(r <= r0, r1 / r0, outside)


def _unpush(d: torch.Tensor, r0: float, r1: float, reach: float) -> torch.Tensor:
    """Offsets ``(M, 3)`` that :func:`_push` takes to ``d``: radius ``s`` back to ``r`` by Newton's
    method on ``r + (r1 - r0) w((r - r0) / reach) = s``, increasing in ``r``, so with one root."""
    s = d.norm(dim=-1, keepdim=True)
    delta = r1 - r0
    r = (s - delta * _fall((s - r1) / (r0 + reach - r1))).clamp(r0, r0 + reach)
    for _ in range(_NEWTON_STEPS):
        t = (r - r0) / reach
        step = (r + delta * _fall(t) - s) / (1.0 + delta * _fall_slope(t) / reach)
        r = (r - step).clamp(r0, r0 + reach)
    r = torch.where(s <= r1, s * (r0 / r1), torch.where(s >= r0 + reach, s, r))
    return d * r / s.clamp_min(1e-12)


def _shift(d: torch.Tensor, r1: float, shift: torch.Tensor, reach: float) -> torch.Tensor:
    """Displacements ``(M, 3)`` by a lesion's shift ``(3,)`` of points at offsets ``d`` from its centre."""
    return shift * _fall((d.norm(dim=-1, keepdim=True) - r1) / reach)


def _unshift(e: torch.Tensor, r1: float, shift: torch.Tensor, reach: float) -> torch.Tensor:
    """Displacements ``(M, 3)`` undoing :func:`_shift` at offsets ``e``: ``-a shift``, ``a`` the root in
    [0, 1] of ``f(a) = a - w((|e - a shift| - r1) / reach)``, increasing (``f' >= 1 - 1.5 |shift| / reach
    > 0``): Newton's method kept inside a shrinking bracket of the root (bisecting where it would leave)."""
    low, high = torch.zeros((2, len(e), 1), dtype=e.dtype, device=e.device)
    high += 1.0
    a = _fall((e.norm(dim=-1, keepdim=True) - r1) / reach)
    for _ in range(_SHIFT_STEPS):
        d = e - a * shift
        n = d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        t = (n - r1) / reach
        f = a - _fall(t)
        low, high = torch.where(f <= 0, a, low), torch.where(f >= 0, a, high)
        a = a - f / (1.0 + _fall_slope(t) * (d @ shift)[:, None] / (n * reach))
        a = torch.where((a >= low) & (a <= high), a, (low + high) / 2)
    return -a * shift


def _move(flat: torch.Tensor, centre: torch.Tensor, extent_mm: float, step: PointMap) -> None:
    """Apply ``step`` in place to the points of ``flat`` ``(N, 3)`` within ``extent_mm`` of ``centre``,
    the identity further out."""
    moved = _near(flat, centre, extent_mm)
    flat[moved] = step(flat[moved])


@dataclass(frozen=True, eq=False)
class MassEffect:
    """Lesions changing size and place, in order, each a radial push then a shift (module notes); world mm.

    centres_mm: ``(K, 3)`` where each lesion's maps are centred: its baseline centre carried by the
    earlier lesions' maps. radii_mm, grown_mm: ``(K,)`` radius before and after. reach_mm: ``(K,)``
    distance beyond the baseline boundary where the push has faded to nothing. shifts_mm: ``(K, 3)``
    each lesion's move. shift_reach_mm: ``(K,)`` distance beyond the follow-up boundary where the shift
    has faded to nothing. All float64 on one device.
    """

    centres_mm: torch.Tensor
    radii_mm: torch.Tensor
    grown_mm: torch.Tensor
    reach_mm: torch.Tensor
    shifts_mm: torch.Tensor
    shift_reach_mm: torch.Tensor

    def apply(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Where baseline points ``(*P, 3)`` are after every lesion's maps (their dtype, on the effect's
        device)."""
        flat = points_mm.reshape(-1, 3).clone()
        for k in range(len(self.radii_mm)):
            centre, steps = self._steps(k, flat.dtype)
            for extent, forward, _ in steps:
                _move(flat, centre, extent, forward)
        return flat.reshape(points_mm.shape)

    def invert(self, points_mm: torch.Tensor) -> torch.Tensor:
        """The baseline points whose mapped places are ``points_mm`` ``(*P, 3)``: ``apply``'s inverse."""
        flat = points_mm.reshape(-1, 3).clone()
        for k in reversed(range(len(self.radii_mm))):
            centre, steps = self._steps(k, flat.dtype)
            for extent, _, inverse in reversed(steps):
                _move(flat, centre, extent, inverse)
        return flat.reshape(points_mm.shape)

    def _steps(
        self, k: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, tuple[tuple[float, PointMap, PointMap], ...]]:
        """Lesion ``k``'s centre ``(3,)`` and its push and shift, each as (the distance from the centre
        it moves points within, the map and its inverse). Both maps take that ball onto itself; a
        zero shift leaves every point exactly where it was."""
        r0, r1, reach, spread = (
            float(v[k]) for v in (self.radii_mm, self.grown_mm, self.reach_mm, self.shift_reach_mm)
        )
        c, shift = self.centres_mm[k].to(dtype), self.shifts_mm[k].to(dtype)
        push = (
            r0 + reach,
            lambda p: c + _push(p - c, r0, r1, reach),
            lambda p: c + _unpush(p - c, r0, r1, reach),
        )
        move = (
            r1 + spread,
            lambda p: p + _shift(p - c, r1, shift, spread),
            lambda p: p + _unshift(p - c, r1, shift, spread),
        )
        return c, (push, move)


def mass_effect(
    centres_mm: np.ndarray,
    radii_mm: np.ndarray,
    grown_mm: np.ndarray,
    reach_mm: np.ndarray,
    shifts_mm: np.ndarray | None = None,
    shift_reach_mm: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> MassEffect:
    """The :class:`MassEffect` of lesions at baseline ``centres_mm`` ``(K, 3)`` whose radii ``radii_mm``
    ``(K,)`` become ``grown_mm``, each push fading to 0 over ``reach_mm`` beyond its boundary, each
    lesion then moved by ``shifts_mm`` ``(K, 3)`` (none if None), fading over ``shift_reach_mm`` ``(K,)``
    beyond its follow-up boundary (at least 1.5 times the shift's length)."""
    k = len(np.asarray(radii_mm))
    shifts = np.zeros((k, 3)) if shifts_mm is None else np.asarray(shifts_mm, float).reshape(k, 3)
    spreads = np.ones(k) if shift_reach_mm is None else shift_reach_mm
    sizes = [
        torch.as_tensor(np.asarray(v, float), device=device)
        for v in (radii_mm, grown_mm, reach_mm, shifts, spreads)
    ]
    centres = torch.as_tensor(np.asarray(centres_mm, float), device=device).reshape(-1, 3).clone()
    for j in range(k):  # lesion j's maps move the later lesions' centres before their own maps
        one = MassEffect(centres[j : j + 1], *(v[j : j + 1] for v in sizes))
        centres[j + 1 :] = one.apply(centres[j + 1 :])
    return MassEffect(centres, *sizes)


@dataclass(frozen=True, eq=False)
class Lesion:
    """One lesion's truth, world mm (LPS): baseline centre and radius, and where and how big at follow-up."""

    label: str
    centre_mm: np.ndarray  # (3,) in the baseline scan
    radius_mm: float
    followup_centre_mm: np.ndarray  # (3,) in the follow-up scan: the baseline centre mapped exactly
    followup_radius_mm: float


@dataclass(frozen=True, eq=False)
class Longitudinal:
    """A baseline scan with lesions, its follow-up, and the exact maps between them.

    baseline_tissues, followup_tissues: probabilities of :data:`CLASSES` + :data:`LESION_CLASSES` on
    each image's grid, summing to 1. mass_effect: baseline -> lesions changed (pushed and shifted).
    change: the brain's longitudinal change, ``subject_points`` taking the lesions-changed baseline to
    the follow-up before its motion and ``template_points`` back (None: none). motion: -> follow-up
    world (rigid). deformation: the baseline subject <-> the template. seed: what reproduces it with
    the same configs.
    """

    baseline: Image
    followup: Image
    baseline_tissues: dict[str, Image]
    followup_tissues: dict[str, Image]
    lesions: tuple[Lesion, ...]
    mass_effect: MassEffect
    change: Deformation | None
    motion: AffineTransform
    deformation: Deformation
    seed: int

    def followup_points(self, points_mm: torch.Tensor) -> torch.Tensor:
        """``baseline_to_followup`` of points ``(*P, 3)`` as a tensor on the maps' device."""
        return _to_followup(points_mm, self.mass_effect, self.change, self.motion)

    def baseline_points(self, points_mm: torch.Tensor) -> torch.Tensor:
        """``followup_to_baseline`` of points ``(*P, 3)`` as a tensor on the maps' device."""
        return _to_baseline(points_mm, self.mass_effect, self.change, self.motion)

    def baseline_to_followup(self, points_mm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Follow-up world points ``(N, 3)`` showing what baseline world points ``(N, 3)`` show."""
        return map_points(self.followup_points, points_mm, self.mass_effect.radii_mm.device)

    def followup_to_baseline(self, points_mm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Baseline world points ``(N, 3)`` showing what follow-up world points ``(N, 3)`` show."""
        return map_points(self.baseline_points, points_mm, self.mass_effect.radii_mm.device)


def _to_followup(
    points_mm: torch.Tensor, effect: MassEffect, change: Deformation | None, motion: AffineTransform
) -> torch.Tensor:
    """``R(phi(M(p)))`` of baseline points ``(*P, 3)`` (module notes)."""
    changed = effect.apply(points_mm)
    if change is not None:
        changed = change.subject_points(changed, _CHANGE_STEPS)
    return affine_points(changed, motion)


def _to_baseline(
    points_mm: torch.Tensor, effect: MassEffect, change: Deformation | None, motion: AffineTransform
) -> torch.Tensor:
    """``M^-1(phi^-1(R^-1(q)))`` of follow-up points ``(*P, 3)``: :func:`_to_followup`'s inverse."""
    before = affine_points(points_mm, motion.inverse())
    return effect.invert(before if change is None else change.template_points(before))


@dataclass(frozen=True, eq=False)
class _Balls:
    """Lesions as painted at baseline: centres ``(K, 3)``, radii and rim fractions ``(K,)``, float64."""

    centres_mm: torch.Tensor
    radii_mm: torch.Tensor
    rims: torch.Tensor

    def probabilities(self, points_mm: torch.Tensor, edge_mm: float) -> torch.Tensor:
        """Core and rim probabilities ``(2, *P)`` at baseline points ``(*P, 3)``: balls with a linear
        partial-volume edge ``edge_mm`` wide (as :func:`head_labels` draws its surfaces)."""
        flat = points_mm.reshape(-1, 3)
        whole, core = torch.zeros((2, len(flat)), dtype=flat.dtype, device=flat.device)
        for c, r, rim in zip(
            self.centres_mm.to(flat), self.radii_mm.tolist(), self.rims.tolist(), strict=True
        ):
            near = _near(flat, c, r + edge_mm)
            d = (flat[near] - c).norm(dim=-1)
            whole[near] += (0.5 + (r - d) / edge_mm).clamp(0.0, 1.0)
            core[near] += (0.5 + (r * (1.0 - rim) - d) / edge_mm).clamp(0.0, 1.0)
        whole, core = whole.clamp(max=1.0), core.clamp(max=1.0)  # edges meet only if gap_mm < edge_mm
        return torch.stack([core, whole - core]).reshape(2, *points_mm.shape[:-1])


def _with_lesions(head: torch.Tensor, lesions: torch.Tensor) -> torch.Tensor:
    """The head's :data:`CLASSES` ``(5, *P)`` giving way to lesion core and rim ``(2, *P)``: ``(7, *P)``."""
    return torch.cat([head * (1.0 - lesions.sum(dim=0)), lesions])


def _place(
    head: torch.Tensor, grid: Grid, sizes_mm: np.ndarray, gap_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Centres ``(K, 3)`` (world mm) at grey- or white-matter voxels of ``grid``, each ball of radius
    ``sizes_mm`` ``(K,)`` a voxel inside the brain (not air, not skull) and ``gap_mm`` clear of the others.

    Each centre is the free voxel of smallest random key (keys drawn for every voxel): uniform over the
    free voxels, and a voxel whose class flips with the device's rounding rarely changes the choice.
    """
    p = head.cpu().numpy()
    brain = p[CLASSES.index("background")] + p[CLASSES.index("nonbrain")] < 0.5
    depth = -signed_distance_mm(Image(np.zeros(grid.shape, np.float32), grid), brain)
    tissue = (p[CLASSES.index("gm")] + p[CLASSES.index("wm")] > 0.5) & brain
    points = grid.index_to_world(np.argwhere(tissue)[:, ::-1].astype(float))
    depth = depth[tissue]
    centres: list[np.ndarray] = []
    for k, size in enumerate(sizes_mm):
        keys = rng.random(grid.shape)[tissue]
        free = depth >= size + max(grid.spacing_mm)
        for c, other in zip(centres, sizes_mm, strict=False):
            free &= np.linalg.norm(points - c, axis=1) >= size + other + gap_mm
        if not free.any():
            raise EmptyRegionError(
                f"no room in the brain for lesion {k + 1} of {len(sizes_mm)} ({size:.1f} mm at its "
                "larger radius); ask for fewer or smaller lesions (LesionConfig)"
            )
        centres.append(points[np.where(free, keys, np.inf).argmin()])
    return np.array(centres)


def _away_from(taken: tuple[float, ...], gap: float, rng: np.random.Generator) -> float:
    """A value drawn uniformly from [0, 1] at least ``gap`` from each of ``taken``."""
    while True:  # at most 0.8 of [0, 1] is excluded (two values, gap <= 0.2)
        value = float(rng.uniform())
        if all(abs(value - t) >= gap for t in taken):
            return value


def _lesion_look(look: Look, config: LesionConfig, spread: Range, rng: np.random.Generator) -> Look:
    """``look`` with means and spreads for :data:`LESION_CLASSES`: the core at least ``min_contrast``
    from grey and white matter, the rim ``rim_offset`` brighter or darker than the core."""
    core = _away_from((look.means["gm"], look.means["wm"]), config.min_contrast, rng)
    rim = float(np.clip(core + rng.choice([-1.0, 1.0]) * rng.uniform(*config.rim_offset), 0.0, 1.0))
    core_sd, rim_sd = (float(v) for v in rng.uniform(*spread, 2))
    means = {**look.means, "lesion": core, "rim": rim}
    return replace(look, means=means, spreads={**look.spreads, "lesion": core_sd, "rim": rim_sd})


def _draw_lesions(
    head: torch.Tensor,
    grid: Grid,
    config: LesionConfig,
    rng: np.random.Generator,
    change_rng: np.random.Generator,
    device: torch.device | str,
) -> tuple[_Balls, MassEffect]:
    """Lesions in the baseline subject whose classes on ``grid`` are ``head`` ``(5, *grid.shape)``, and
    their mass effect; their shifts drawn from ``change_rng``."""
    n = int(rng.integers(config.count[0], config.count[1] + 1))
    radii = rng.uniform(*config.radius_mm, n)
    grown = radii * rng.uniform(*config.growth, n)
    reach = radii * rng.uniform(*config.reach, n)
    rims = rng.uniform(*config.rim, n)
    centres = _place(head, grid, np.maximum(radii, grown), config.gap_mm, rng)
    directions = change_rng.standard_normal((n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    shifts = directions * change_rng.uniform(*config.shift_mm, (n, 1))
    spreads = change_rng.uniform(*config.shift_reach_mm, n)
    balls = _Balls(*(torch.as_tensor(v, device=device) for v in (centres, radii, rims)))
    return balls, mass_effect(centres, radii, grown, reach, shifts, spreads, device)


def _draw_change(
    head: torch.Tensor, grid: Grid, config: SmoothFieldConfig, seed: int, device: torch.device | str
) -> Deformation | None:
    """The brain's longitudinal change: a ``regional``-family field of ``config`` over the head whose
    classes on ``grid`` are ``head`` ``(5, *grid.shape)``, with no affine; None if its largest
    displacement is 0."""
    if config.max_displacement_mm[1] == 0:
        return None
    labels = {k: Image(p, grid) for k, p in zip(CLASSES, head.cpu().numpy(), strict=True)}
    no_affine = AffineConfig(max_scale=0.0, max_shear=0.0, max_angle_deg=0.0, max_translation_mm=0.0)
    return random_deformation(
        labels, "regional", DeformationConfig(regional_field=config, affine=no_affine), seed, device
    )


def _painter(
    labels: dict[str, Image],
    deformation: Deformation,
    balls: _Balls,
    to_baseline: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[Grid], torch.Tensor]:
    """``probs_on`` for :func:`acquire`: the :data:`CLASSES` + :data:`LESION_CLASSES` probabilities at
    the baseline points ``to_baseline(x)`` of a grid's points ``x``."""

    def probs_on(grid: Grid) -> torch.Tensor:
        points = to_baseline(grid_points_mm(grid, deformation.device))
        head = classes_at(labels, deformation.template_points(points))
        return _with_lesions(head, balls.probabilities(points, min(grid.spacing_mm)).float())

    return probs_on


def _scan(
    probs_on: Callable[[Grid], torch.Tensor],
    grid: Grid,
    contrast: Contrast,
    appearance: AppearanceConfig,
    config: LesionConfig,
    rng: np.random.Generator,
) -> tuple[Image, dict[str, Image]]:
    """One scan painted with a new look (lesions included) and its class maps on its grid."""
    look = _lesion_look(draw_look(contrast, appearance, rng), config, appearance.spread, rng)
    image, probs = acquire(probs_on, grid, look, contrast, appearance.regrid, CLASSES + LESION_CLASSES)
    maps = {
        k: Image(p.cpu().numpy(), image.grid, None, f"synthetic {k}")
        for k, p in zip(CLASSES + LESION_CLASSES, probs, strict=True)
    }
    return image, maps


def make_longitudinal(
    template: Image,
    tissues: dict[str, Image],
    subject_config: SubjectConfig | None = None,
    followup_config: FollowupConfig = FollowupConfig(),
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Longitudinal:
    """A random baseline scan with lesions and its follow-up, reproducible from ``seed`` on any device.

    template, tissues: as :func:`crossreg.synth.subjects.make_subject` takes them (pass
    :func:`head_labels`' classes to compute them once for many pairs). subject_config: the baseline
    subject (anatomy, contrast, look; ``SubjectConfig()`` if None). followup_config: the follow-up's
    motion and look, and the lesions.
    """
    subject_config = subject_config or SubjectConfig()
    labels = (
        tissues if set(CLASSES) <= set(tissues) else head_labels(template, tissues, subject_config.labels)
    )
    rng = np.random.default_rng(seed)
    change_rng = np.random.default_rng([seed, 1])  # its own stream: turning the change off leaves the rest
    _, deformation, grid = draw_anatomy(labels, subject_config, rng, device)
    head = classes_at(labels, deformation.template_points(grid_points_mm(grid, deformation.device)))
    f = followup_config
    balls, effect = _draw_lesions(head, grid, f.lesions, rng, change_rng, device)
    change = _draw_change(head, grid, f.change, int(change_rng.integers(2**31)), device)
    angle, shift = rng.uniform(0.0, f.max_angle_deg), rng.uniform(0.0, f.max_translation_mm)
    motion = random_rigid(3, float(angle), float(shift), grid.center_mm(), int(rng.integers(2**31)))
    baseline, baseline_maps = _scan(
        _painter(labels, deformation, balls, lambda x: x),
        grid,
        subject_config.contrast,
        subject_config.appearance,
        f.lesions,
        rng,
    )
    followup_grid = covering_grid(motion.apply(grid.corners_mm()), grid.spacing_mm, grid.direction)
    followup, followup_maps = _scan(
        _painter(labels, deformation, balls, lambda x: _to_baseline(x, effect, change, motion)),
        followup_grid,
        f.contrast or subject_config.contrast,
        f.appearance,
        f.lesions,
        rng,
    )
    moved = _to_followup(balls.centres_mm, effect, change, motion).cpu().numpy()
    lesions = tuple(
        Lesion(f"L{k + 1}", c, float(r), m, float(g))
        for k, (c, r, m, g) in enumerate(
            zip(balls.centres_mm.cpu().numpy(), balls.radii_mm, moved, effect.grown_mm, strict=True)
        )
    )
    return Longitudinal(
        baseline, followup, baseline_maps, followup_maps, lesions, effect, change, motion, deformation, seed
    )


def write_lesions_csv(
    path: str | Path, centres_mm: np.ndarray, radii_mm: np.ndarray, labels: list[str]
) -> None:
    """Write lesions atomically as CSV ``x,y,z,radius,label`` (world mm, LPS; full float precision);
    :func:`crossreg.markups.read_landmarks_csv` reads the centres back."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["x", "y", "z", "radius", "label"])
    for centre, radius, label in zip(np.asarray(centres_mm, float), radii_mm, labels, strict=True):
        writer.writerow([*(repr(float(v)) for v in centre), repr(float(radius)), label])
    atomic_write_text(path, buf.getvalue())


def write_longitudinal(longi: Longitudinal, out_dir: str | Path, force: bool = False) -> dict[str, Path]:
    """Write :data:`LONGITUDINAL_FILES` to ``out_dir`` (created if needed): both scans and the lesions
    at baseline and (the truth) at follow-up. Raises OutputExistsError before writing anything if a
    file exists and ``force`` is False; each file is written atomically. Gives back the paths by name."""
    paths = {name: Path(out_dir) / name for name in LONGITUDINAL_FILES}
    check_outputs(paths.values(), force)
    save(longi.baseline, paths["baseline.nii.gz"])
    save(longi.followup, paths["followup.nii.gz"])
    labels = [lesion.label for lesion in longi.lesions]
    for name, centre, radius in (
        ("lesions_baseline.csv", "centre_mm", "radius_mm"),
        ("lesions_followup.csv", "followup_centre_mm", "followup_radius_mm"),
    ):
        centres = np.array([getattr(lesion, centre) for lesion in longi.lesions])
        radii = np.array([getattr(lesion, radius) for lesion in longi.lesions])
        write_lesions_csv(paths[name], centres, radii, labels)
    return paths
