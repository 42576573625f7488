"""Synthetic lesions that grow, shrink and push tissue: longitudinal pairs with exact lesion tracks.

A baseline scan is a synthetic subject (:mod:`crossreg.synth.subjects`) with lesions painted in: balls
in grey or white matter, each an extra tissue class (a core and a rim of their own intensities)
replacing what it occupies. The follow-up scan is the same anatomy later: every lesion's radius
multiplied by a growth factor, the tissue around it pushed by the change (the :class:`MassEffect`),
the head moved by a random rigid motion, and all of it painted with a new look (contrast, bias, noise).

The mass effect of one lesion (centre ``c``, radius ``r0`` becoming ``r1``) is radial: a point at
distance ``r`` from ``c`` moves to distance ``r * r1 / r0`` inside the lesion and to
``r + (r1 - r0) w((r - r0) / L)`` outside it, where ``w`` falls smoothly from 1 to 0 (``1 - 3t^2 +
2t^3``) and ``L`` is the reach. Tissue at the boundary moves by exactly the radius change; beyond
``r0 + L`` nothing moves. The radius never decreases along a ray (``L`` above 1.5 (r1 - r0); the
config asks for 2): a diffeomorphism off the boundary sphere, continuous with a positive Jacobian
everywhere. The lesions' maps are composed in order, each centred where its lesion's centre is after
the earlier ones, so a neighbour's push can move a lesion's centre too. ``baseline_to_followup(p) =
R(M(p))`` exactly (``M`` the pushes, ``R`` the motion); its inverse undoes each step (the radial
equation by Newton's method, to 1e-9 mm).

Both scans are pulled through the maps: the follow-up at ``q`` shows the baseline's tissue (lesions
included) at ``followup_to_baseline(q)``, so every point, on or off a lesion, has exact truth.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from crossreg.errors import EmptyRegionError, InvalidConfigError
from crossreg.image import Grid, Image
from crossreg.imageio import save
from crossreg.outputs import atomic_write_text, check_outputs
from crossreg.synth.beam import grid_points_mm
from crossreg.synth.diffeo import Deformation, Range, affine_points, check_range, map_points
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
Radial = Callable[[torch.Tensor, float, float, float], torch.Tensor]  # offsets, r0, r1, reach -> offsets
_NEWTON_STEPS = 5  # inverting the radial push: 4 reach 1e-13 of the radius for every allowed config


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
        ):
            check_range("LesionConfig", name, getattr(self, name), low, high)
        if self.reach[0] < 2.0 * (self.growth[1] - 1.0):
            raise InvalidConfigError(
                f"LesionConfig: reach {self.reach[0]:g} radii is too short for growth up to "
                f"{self.growth[1]:g} (the push would fold tissue); give reach >= 2 (growth - 1)"
            )


@dataclass(frozen=True)
class FollowupConfig:
    """The follow-up scan: its own rigid motion and look, and how the lesions change."""

    max_angle_deg: float = 12.0  # rotation about a random axis through the head centre, up to this, 0-45
    max_translation_mm: float = 15.0  # shift of the head, up to this, mm, 0-100
    contrast: Contrast | None = None  # the follow-up's contrast (subjects.CONTRASTS); the baseline's if None
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)  # intensities and acquisition
    lesions: LesionConfig = field(default_factory=LesionConfig)  # the lesions of both scans

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


@dataclass(frozen=True, eq=False)
class MassEffect:
    """Radial pushes of lesions changing size, composed in order (module notes); world mm.

    centres_mm: ``(K, 3)`` where each push is centred: its lesion's baseline centre carried by the
    earlier pushes. radii_mm, grown_mm: ``(K,)`` radius before and after. reach_mm: ``(K,)`` distance
    beyond the baseline boundary where the push has faded to nothing. All float64 on one device.
    """

    centres_mm: torch.Tensor
    radii_mm: torch.Tensor
    grown_mm: torch.Tensor
    reach_mm: torch.Tensor

    def apply(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Where baseline points ``(*P, 3)`` are after every push (their dtype, on the effect's device)."""
        return self._each(points_mm, range(len(self.radii_mm)), _push)

    def invert(self, points_mm: torch.Tensor) -> torch.Tensor:
        """The baseline points whose pushed places are ``points_mm`` ``(*P, 3)``: ``apply``'s inverse."""
        return self._each(points_mm, reversed(range(len(self.radii_mm))), _unpush)

    def _each(self, points_mm: torch.Tensor, order: Iterable[int], radial: Radial) -> torch.Tensor:
        """``radial`` (:func:`_push` or :func:`_unpush`) of each push in ``order``, on the points it
        moves: those within its reach (before and after it, the same ball)."""
        flat = points_mm.reshape(-1, 3).clone()
        for k in order:
            c = self.centres_mm[k].to(flat.dtype)
            r0, r1, reach = (float(v[k]) for v in (self.radii_mm, self.grown_mm, self.reach_mm))
            moved = _near(flat, c, r0 + reach)
            flat[moved] = c + radial(flat[moved] - c, r0, r1, reach)
        return flat.reshape(points_mm.shape)


def mass_effect(
    centres_mm: np.ndarray,
    radii_mm: np.ndarray,
    grown_mm: np.ndarray,
    reach_mm: np.ndarray,
    device: torch.device | str = "cpu",
) -> MassEffect:
    """The :class:`MassEffect` of lesions at baseline ``centres_mm`` ``(K, 3)`` whose radii
    ``radii_mm`` ``(K,)`` become ``grown_mm``, each push fading to 0 over ``reach_mm`` beyond its boundary."""
    sizes = [torch.as_tensor(np.asarray(v, float), device=device) for v in (radii_mm, grown_mm, reach_mm)]
    centres = torch.as_tensor(np.asarray(centres_mm, float), device=device).reshape(-1, 3).clone()
    for k in range(len(centres)):  # push k moves the later lesions' centres before their own pushes
        push = MassEffect(centres[k : k + 1], *(v[k : k + 1] for v in sizes))
        centres[k + 1 :] = push.apply(centres[k + 1 :])
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
    each image's grid, summing to 1. mass_effect: baseline -> pushed baseline. motion: pushed baseline
    -> follow-up world (rigid). deformation: the baseline subject <-> the template. seed: what
    reproduces it with the same configs.
    """

    baseline: Image
    followup: Image
    baseline_tissues: dict[str, Image]
    followup_tissues: dict[str, Image]
    lesions: tuple[Lesion, ...]
    mass_effect: MassEffect
    motion: AffineTransform
    deformation: Deformation
    seed: int

    def followup_points(self, points_mm: torch.Tensor) -> torch.Tensor:
        """``baseline_to_followup`` of points ``(*P, 3)`` as a tensor on the maps' device."""
        return affine_points(self.mass_effect.apply(points_mm), self.motion)

    def baseline_points(self, points_mm: torch.Tensor) -> torch.Tensor:
        """``followup_to_baseline`` of points ``(*P, 3)`` as a tensor on the maps' device."""
        return self.mass_effect.invert(affine_points(points_mm, self.motion.inverse()))

    def baseline_to_followup(self, points_mm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Follow-up world points ``(N, 3)`` showing what baseline world points ``(N, 3)`` show."""
        return map_points(self.followup_points, points_mm, self.mass_effect.radii_mm.device)

    def followup_to_baseline(self, points_mm: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Baseline world points ``(N, 3)`` showing what follow-up world points ``(N, 3)`` show."""
        return map_points(self.baseline_points, points_mm, self.mass_effect.radii_mm.device)


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
    head: torch.Tensor, grid: Grid, config: LesionConfig, rng: np.random.Generator, device: torch.device | str
) -> tuple[_Balls, MassEffect]:
    """Lesions in the baseline subject whose classes on ``grid`` are ``head`` ``(5, *grid.shape)``, and
    their mass effect."""
    n = int(rng.integers(config.count[0], config.count[1] + 1))
    radii = rng.uniform(*config.radius_mm, n)
    grown = radii * rng.uniform(*config.growth, n)
    reach = radii * rng.uniform(*config.reach, n)
    rims = rng.uniform(*config.rim, n)
    centres = _place(head, grid, np.maximum(radii, grown), config.gap_mm, rng)
    balls = _Balls(*(torch.as_tensor(v, device=device) for v in (centres, radii, rims)))
    return balls, mass_effect(centres, radii, grown, reach, device)


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
    _, deformation, grid = draw_anatomy(labels, subject_config, rng, device)
    head = classes_at(labels, deformation.template_points(grid_points_mm(grid, deformation.device)))
    balls, effect = _draw_lesions(head, grid, followup_config.lesions, rng, device)
    f = followup_config
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
        _painter(labels, deformation, balls, lambda x: effect.invert(affine_points(x, motion.inverse()))),
        followup_grid,
        f.contrast or subject_config.contrast,
        f.appearance,
        f.lesions,
        rng,
    )
    centres = balls.centres_mm
    moved = affine_points(effect.apply(centres), motion).cpu().numpy()
    lesions = tuple(
        Lesion(f"L{k + 1}", c, float(r), m, float(g))
        for k, (c, r, m, g) in enumerate(
            zip(centres.cpu().numpy(), balls.radii_mm, moved, effect.grown_mm, strict=True)
        )
    )
    return Longitudinal(
        baseline, followup, baseline_maps, followup_maps, lesions, effect, motion, deformation, seed
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
