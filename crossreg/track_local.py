"""Lesions tracked locally: a rigid registration of the pair, then a MIND-SSC patch search per lesion.

Between two scans of one patient the head moves rigidly, and :func:`crossreg.register` finds that
motion reliably. What it leaves are the local changes: the brain shrinks or swells a few mm, and a
lesion that grows eccentrically moves against its surroundings. Each lesion is therefore found by
its own appearance, close to where the rigid transform puts it:

1. both scans are cropped around the lesion on a ``spacing_mm`` grid in the baseline's frame (the
   follow-up pulled through the rigid transform; intensities scaled without clipping, which would
   flatten a bright lesion), and described by MIND-SSC (modality independent);
2. a ball of lattice points (radius: the lesion's radius + ``margin_mm``, at least ``min_ball_mm``;
   spacing ``lattice_mm``) is compared with the follow-up shifted by offsets within ``search_mm``
   and scaled by each of ``scales`` (a lesion that grows pushes its surroundings out: the same ball
   unscaled would see only the inside of the grown lesion): the mean squared difference of the
   descriptors, smallest wins. Offsets every ``2 * step_mm`` first, then every ``step_mm`` around the best;
3. a parabola through the best offset and its axis neighbours gives the sub-step position;
4. the fixed-point test: the compared ball as the follow-up shows it (scaled), searched back in the
   baseline the same way at the inverse scale, must come back within ``round_trip_mm`` of the lesion
   centre, or the lesion is unreliable (as in :mod:`crossreg.locate`).

The found point goes back to the follow-up's world through the rigid transform. Only the crop is
described (up to about 90^3 voxels per lesion), so the registration costs more than the lesions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crossreg.errors import CrossregError, DimensionMismatchError, InvalidConfigError
from crossreg.features.mind import MindConfig, mind_maps
from crossreg.image import Grid, Image, axis_aligned_grid, robust_normalize
from crossreg.locate import Located
from crossreg.resample import resample, sample_world
from crossreg.transform import Transform


@dataclass(frozen=True)
class LocalTrackConfig:
    """The patch search of :func:`track_lesions`; lengths in mm."""

    spacing_mm: float = 1.0  # grid of the cropped scans and their MIND-SSC maps
    margin_mm: float = 5.0  # the compared ball reaches this far beyond the lesion's radius
    # ... and has at least this radius: a small lesion in a small ball (3-4 mm lesions in 8-9 mm
    # balls) can match another blob nearby, the more so when the ball may be scaled down.
    min_ball_mm: float = 11.0
    default_radius_mm: float = 5.0  # lesion radius when none is given
    lattice_mm: float = 2.0  # spacing of the compared points inside the ball
    search_mm: float = 8.0  # offsets searched: a ball of this radius around the rigid guess
    step_mm: float = 1.0  # offsets searched every 2 steps, then every step around the best, then a parabola
    # The ball is also compared scaled by each of these in the follow-up: lesions grow and shrink.
    scales: tuple[float, ...] = (0.64, 0.8, 1.0, 1.25, 1.5625)
    round_trip_mm: float = 4.0  # a search back ending further from the lesion centre is unreliable
    chunk: int = 256  # offsets scored at once (memory: chunk x points x 24 channels)

    def __post_init__(self) -> None:
        lengths = (self.spacing_mm, self.default_radius_mm, self.lattice_mm, self.search_mm, self.step_mm)
        if (
            min(lengths) <= 0
            or min(self.margin_mm, self.min_ball_mm) < 0
            or self.round_trip_mm <= 0
            or self.chunk < 1
        ):
            raise InvalidConfigError(f"LocalTrackConfig needs positive lengths and chunk: {self}")
        if not self.scales or min(self.scales) <= 0:
            raise InvalidConfigError(f"LocalTrackConfig needs at least one scale, all positive: {self}")


def ball_offsets(radius_mm: float, spacing_mm: float) -> torch.Tensor:
    """``(K, 3)`` float64 offsets of a cubic lattice of ``spacing_mm`` inside a ball of ``radius_mm``."""
    n = int(np.floor(radius_mm / spacing_mm + 1e-9))
    ticks = torch.arange(-n, n + 1, dtype=torch.float64) * spacing_mm
    cube = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), -1).reshape(-1, 3)
    return cube[cube.norm(dim=1) <= radius_mm + 1e-9]


def patch_cost(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    grid: Grid,
    centre_mm: torch.Tensor,
    offsets_mm: torch.Tensor,
    shifts_mm: torch.Tensor,
    scales: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """``(S,)`` mean squared difference between the maps ``fixed`` ``(C, *grid.shape)`` at the points
    ``centre_mm + offsets_mm`` ``(P, 3)`` and ``moving`` (same grid) at ``centre_mm + shifts_mm[s] +
    scales[s] * offsets_mm`` (``(S, 3)``, ``(S,)``), in blocks of ``chunk`` candidates."""
    # float32 points: sample_world casts the maps to the points' dtype.
    a = sample_world(fixed, grid, (centre_mm + offsets_mm).float())[:, None]  # (C, 1, P)
    costs = [
        (
            (sample_world(moving, grid, (centre_mm + t[:, None] + g[:, None, None] * offsets_mm).float()) - a)
            ** 2
        ).mean(dim=(0, 2))
        for t, g in zip(shifts_mm.split(chunk), scales.split(chunk), strict=True)
    ]
    return torch.cat(costs)


def _parabola(best_mm: torch.Tensor, cost: torch.Tensor, sides: torch.Tensor, step_mm: float) -> torch.Tensor:
    """``(3,)`` the shift ``best_mm`` ``(3,)`` (cost ``cost``) moved per axis to the vertex of the
    parabola through it and ``sides`` ``(2, 3)``: the costs one step below and above; at most half a
    step, and not at all along an axis where the parabola has no minimum."""
    curvature = sides[0] - 2 * cost + sides[1]
    vertex = ((sides[0] - sides[1]) / (2 * curvature)).clamp(-0.5, 0.5)
    return best_mm + step_mm * torch.where(curvature > 0, vertex, torch.zeros_like(vertex)).to(best_mm)


def search_shift(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    grid: Grid,
    centre_mm: torch.Tensor,
    radius_mm: float,
    scales: torch.Tensor,
    config: LocalTrackConfig,
) -> tuple[torch.Tensor, float, float]:
    """``(3,)`` the offset that best carries the ball of ``radius_mm`` around ``centre_mm`` ``(3,)`` of
    the maps ``fixed`` into ``moving`` (both ``(C, *grid.shape)``), the ball scaled by the best of
    ``scales`` ``(G,)``, that scale and the cost: every scale on a lattice of twice ``step_mm``, then
    the best scale on ``step_mm`` around the best, then a parabola."""
    offsets, step = ball_offsets(radius_mm, config.lattice_mm), config.step_mm
    coarse = ball_offsets(config.search_mm, 2 * step)
    shifts, scale_of = coarse.repeat(len(scales), 1), scales.repeat_interleave(len(coarse))
    cost = patch_cost(fixed, moving, grid, centre_mm, offsets, shifts, scale_of, config.chunk)
    best = int(cost.argmin())
    fine = shifts[best] + ball_offsets(2 * step, step)
    steps = torch.cat([-torch.eye(3), torch.eye(3)]).to(fine) * step
    cost = patch_cost(
        fixed, moving, grid, centre_mm, offsets, fine, scale_of[best].expand(len(fine)), config.chunk
    )
    near = int(cost.argmin())
    sides = patch_cost(
        fixed, moving, grid, centre_mm, offsets, fine[near] + steps, scale_of[best].expand(6), 6
    )
    shift = _parabola(fine[near], cost[near], sides.reshape(2, 3), step)
    return shift, float(scale_of[best]), float(cost[near])


def crop_maps(
    baseline: Image,
    followup: Image,
    transform: Transform,
    centre_mm: np.ndarray,
    half_width_mm: float,
    config: LocalTrackConfig,
) -> tuple[torch.Tensor, torch.Tensor, Grid]:
    """MIND-SSC maps ``(C, *shape)`` of ``baseline`` and of ``followup`` pulled through ``transform``
    (baseline world -> follow-up world) on a cube of ``half_width_mm`` around ``centre_mm`` ``(3,)``
    (``spacing_mm`` voxels), and that cube's grid."""
    corners = np.asarray(centre_mm, float) + np.array([[-1.0], [1.0]]) * half_width_mm
    grid = axis_aligned_grid(corners, config.spacing_mm)
    return mind_maps(resample(baseline, grid)), mind_maps(resample(followup, grid, transform)), grid


def track_one(
    baseline: Image,
    followup: Image,
    transform: Transform,
    centre_mm: np.ndarray,
    radius_mm: float,
    config: LocalTrackConfig,
) -> tuple[np.ndarray, float, float]:
    """One lesion: ``(3,)`` where it is in the baseline's frame after the search, the patch cost there
    and how far the search back ended from ``centre_mm`` (see the module notes)."""
    patch_mm = max(radius_mm + config.margin_mm, config.min_ball_mm)
    scales = torch.tensor(config.scales, dtype=torch.float64)
    mind_reach_mm = max(MindConfig().dilations_mm) + 3 * MindConfig().patch_sigma_mm
    half = float(scales.max()) * patch_mm + 2 * config.search_mm + mind_reach_mm
    fixed, moving, grid = crop_maps(baseline, followup, transform, centre_mm, half, config)
    centre = torch.as_tensor(centre_mm, dtype=torch.float64)
    shift, scale, cost = search_shift(fixed, moving, grid, centre, patch_mm, scales, config)
    found = centre + shift
    # Back: the ball the match compared, in the follow-up, at the inverse scale. Letting the way back
    # choose its scale again lets a small ball shrink onto another blob and flags good matches.
    inverse = torch.tensor([1 / scale], dtype=torch.float64)
    back = found + search_shift(moving, fixed, grid, found, scale * patch_mm, inverse, config)[0]
    return found.numpy(), cost, float((back - centre).norm())


def track_lesions(
    baseline: Image,
    centres_mm: np.ndarray,
    followup: Image,
    transform: Transform,
    radii_mm: np.ndarray | None = None,
    config: LocalTrackConfig = LocalTrackConfig(),
) -> Located:
    """Lesions at ``centres_mm`` ``(N, 3)`` (baseline world mm, LPS; radii ``radii_mm`` ``(N,)``, the
    default radius where None or NaN) found in ``followup``, given ``transform`` (baseline world ->
    follow-up world, e.g. ``crossreg.register(baseline, followup).transform``). Score: 1 minus the
    patch cost at the found place."""
    centres_mm = np.asarray(centres_mm, dtype=np.float64)
    if baseline.ndim != 3 or followup.ndim != 3:
        raise DimensionMismatchError(
            f"local tracking is 3D; the images are {baseline.ndim}D and {followup.ndim}D"
        )
    if centres_mm.ndim != 2 or centres_mm.shape[1] != 3:
        raise CrossregError(f"lesion centres must be (N, 3), got {centres_mm.shape}")
    radii = np.full(len(centres_mm), np.nan) if radii_mm is None else np.asarray(radii_mm, dtype=np.float64)
    if radii.shape != (len(centres_mm),):
        raise CrossregError(f"{len(centres_mm)} lesion centres but radii of shape {radii.shape}")
    radii = np.where(np.isfinite(radii) & (radii > 0), radii, config.default_radius_mm)
    # MIND-SSC ignores the intensity scale, but clipping the brightest voxels can erase a bright lesion.
    base, follow = (robust_normalize(image, 0.0, 100.0) for image in (baseline, followup))
    tracked = [
        track_one(base, follow, transform, c, r, config) for c, r in zip(centres_mm, radii, strict=True)
    ]
    found = np.array([t[0] for t in tracked]).reshape(-1, 3)
    score, trips = (np.array([t[k] for t in tracked]) for k in (1, 2))
    return Located(transform.apply(found), 1.0 - score, trips, trips <= config.round_trip_mm)
