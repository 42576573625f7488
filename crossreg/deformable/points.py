"""The linear stage's matches as a soft point term of the deformable field.

A match ``(x_f, x_m)`` asks for ``linear(x_f + u(x_f)) = x_m``, i.e. the displacement
``t = linear^-1(x_m) - x_f`` at ``x_f``. RANSAC kept the matches that agree with one rigid motion;
after brain shift the right matches the rigid motion could not explain are exactly what the field
should follow, and most wrong matches are far off. So a match is kept when ``|t|`` is within a capture
radius and ``t`` agrees with the median ``t`` of its nearest kept neighbours (tissue moves smoothly;
a wrong match rarely agrees with the right ones around it). The kept matches pull the field through a
bounded Geman-McClure penalty ``r^2 / (r^2 + sigma^2)`` of the residual ``r = |u(x_f) - t|``, a term
of the Adam stage's loss; a wrong match that survives costs at most its weight, wherever it points.
Not in the convex search: as a prior on its nodes' candidates it sent an MR-ultrasound development
field to 14 mm (TRE 2.8 -> 5.0 mm; 2.8 with the Adam term alone) and changed nothing on MR-MR.

Working voxels throughout; displacement components in ``(x, y, z)`` order, the working grid's index
axes (axis-aligned with the world).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from crossreg.image import Grid
from crossreg.transform import AffineTransform

NEIGHBOURS = 8  # a match's displacement is compared with the median of this many nearest matches
AGREEMENT_MM = 2.0  # ... and kept within this of it
SIGMA_MM = 2.0  # residual at which the Geman-McClure penalty reaches half its ceiling


@dataclass(frozen=True, eq=False)
class PointTargets:
    """Kept matches on a working grid: ``index_xyz`` ``(P, d)`` continuous voxel indices of the fixed
    points, ``target_vox`` ``(P, d)`` the displacement each asks for, ``sigma_vox`` the penalty's
    scale, all in that grid's voxels."""

    index_xyz: torch.Tensor
    target_vox: torch.Tensor
    sigma_vox: float

    def __len__(self) -> int:
        return len(self.index_xyz)

    def halved(self) -> PointTargets:
        """The same matches on the grid of twice the spacing whose voxel 0 covers voxels 0 and 1
        (:func:`crossreg.deformable.features.halved`)."""
        return PointTargets((self.index_xyz - 0.5) / 2.0, self.target_vox / 2.0, self.sigma_vox / 2.0)


def point_targets(
    fixed_mm: np.ndarray,
    moving_mm: np.ndarray,
    linear: AffineTransform,
    grid: Grid,
    capture_mm: float,
) -> PointTargets:
    """The matches ``fixed_mm``, ``moving_mm`` ``(M, d)`` (world mm) that may constrain the field on
    ``grid`` (axis-aligned, isotropic): inside it, asking for at most ``capture_mm``, and agreeing with
    their neighbours (:func:`agreeing`)."""
    fixed_mm, moving_mm = np.asarray(fixed_mm, float), np.asarray(moving_mm, float)
    target_mm = linear.inverse().apply(moving_mm) - fixed_mm
    keep = grid.contains(fixed_mm) & (np.linalg.norm(target_mm, axis=1) <= capture_mm)
    points = torch.as_tensor(fixed_mm[keep], dtype=torch.float32)
    target = torch.as_tensor(target_mm[keep], dtype=torch.float32)
    keep = agreeing(points, target, NEIGHBOURS, AGREEMENT_MM)
    spacing = grid.spacing_mm[0]
    index = torch.as_tensor(grid.world_to_index(points[keep].double().numpy()), dtype=torch.float32)
    return PointTargets(index, target[keep] / spacing, SIGMA_MM / spacing)


def agreeing(
    points_mm: torch.Tensor, target_mm: torch.Tensor, neighbours: int, tolerance_mm: float
) -> torch.Tensor:
    """Which matches ``(P,)`` bool ask for a displacement within ``tolerance_mm`` of the per-axis median
    of their ``neighbours`` nearest other matches' (by fixed position, ``points_mm`` ``(P, d)``;
    ``target_mm`` ``(P, d)``). With fewer than ``neighbours + 1`` matches none is trusted."""
    if len(points_mm) <= neighbours:
        return torch.zeros(len(points_mm), dtype=torch.bool)
    distance = torch.cdist(points_mm, points_mm)
    distance.fill_diagonal_(float("inf"))
    nearest = distance.topk(neighbours, largest=False).indices  # (P, k)
    median = target_mm[nearest].median(dim=1).values
    return (target_mm - median).norm(dim=1) <= tolerance_mm


def geman_mcclure(residual_sq: torch.Tensor, sigma: float) -> torch.Tensor:
    """``r^2 / (r^2 + sigma^2)`` of squared residuals: 0 at a perfect fit, at most 1."""
    return residual_sq / (residual_sq + sigma**2)


def point_loss(u_vox: torch.Tensor, targets: PointTargets) -> torch.Tensor:
    """Mean penalty of the field ``u_vox`` ``(d, *shape)`` at the matches against their targets."""
    if len(targets) == 0:
        return u_vox.new_zeros(())
    shape = u_vox.shape[1:]
    size = torch.tensor([max(n - 1, 1) for n in reversed(shape)], dtype=u_vox.dtype, device=u_vox.device)
    coords = targets.index_xyz.to(u_vox) * 2.0 / size - 1.0
    sampled = F.grid_sample(
        u_vox[None], coords.view(1, *([1] * (len(shape) - 1)), -1, len(shape)), align_corners=True
    )
    residual_sq = ((sampled.reshape(len(shape), -1).T - targets.target_vox.to(u_vox)) ** 2).sum(1)
    return geman_mcclure(residual_sq, targets.sigma_vox).mean()
