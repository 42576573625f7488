"""Instance optimisation: Adam on a dense displacement field (the second half of ConvexAdam).

The field starts from the coupled convex result and minimises the squared MIND-SSC difference where
both fields of view overlap, plus ``weight`` times a diffusion regulariser everywhere and, where
they do not overlap, a weak pull towards zero displacement: outside a small field of view (an
ultrasound cone) the field stays smooth and fades, instead of following nothing. The parameters are
box-smoothed before use (as in ConvexAdam), which keeps every step smooth as well.

Working voxels throughout; displacement components in ``(x, y, z)`` order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossreg.deformable.features import PairFeatures
from crossreg.deformable.points import PointTargets, point_loss


def identity_coords(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """grid_sample coordinates ``(*shape, d)`` of every voxel centre (align_corners=True)."""
    d = len(shape)
    theta = torch.eye(d, d + 1, device=device)[None]
    return F.affine_grid(theta, [1, 1, *shape], align_corners=True)[0]


def to_normalised(displacement_vox: torch.Tensor) -> torch.Tensor:
    """Displacement ``(d, *shape)`` voxels as grid_sample offsets ``(*shape, d)``."""
    shape = displacement_vox.shape[1:]
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in reversed(shape)], device=displacement_vox.device)
    return torch.movedim(displacement_vox, 0, -1) * scale


def warp(volume: torch.Tensor, displacement_vox: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``volume`` ``(C, *shape)`` sampled at each voxel plus ``displacement_vox`` ``(d, *shape)``."""
    coords = base + to_normalised(displacement_vox)
    return F.grid_sample(volume[None], coords[None], align_corners=True, padding_mode="border")[0]


def diffusion(displacement_vox: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of the field ``(d, *shape)`` along every axis (voxels/voxel)."""
    total = displacement_vox.new_zeros(())
    for axis in range(1, displacement_vox.dim()):
        total = total + torch.diff(displacement_vox, dim=axis).pow(2).mean()
    return total


def smoothed(params: torch.Tensor) -> torch.Tensor:
    """The field ``(d, *shape)`` the parameters stand for: box-smoothed twice over 3 voxels per axis."""
    pool = F.avg_pool3d if params.dim() == 4 else F.avg_pool2d
    for _ in range(2):  # pooling, not crossreg.filters.box_mean: its backward pass is far slower on CPU
        params = pool(params[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    return params


def instance_optimise(
    pair: PairFeatures,
    start_vox: torch.Tensor,
    weight: float,
    outside_weight: float,
    iterations: int,
    learning_rate_vox: float,
    points: PointTargets | None = None,
    point_weight: float = 0.0,
) -> torch.Tensor:
    """Dense displacement ``(d, *shape)`` (voxels) refined from ``start_vox`` by Adam; ``points``
    (matches on this grid) add ``point_weight`` x their mean penalty."""
    base = identity_coords(tuple(start_vox.shape[1:]), start_vox.device)
    moving = torch.cat([pair.moving, pair.moving_weight[None], pair.moving_mask[None].float()])
    fixed_mask = pair.fixed_mask.float()
    params = start_vox.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([params], lr=learning_rate_vox)
    scale = None
    for _ in range(iterations):
        u = smoothed(params)
        seen = warp(moving, u, base)
        overlap = fixed_mask * (seen[-1] > 0.5)
        diff = ((pair.fixed - seen[:-2]) ** 2).mean(0)
        # Unweighted, the data term starts at 1 whatever the features; the structure confidence of
        # both images then scales it down where either is flat.
        scale = scale or max(float((overlap * diff).detach().sum() / overlap.sum().clamp(min=1.0)), 1e-12)
        weighted = overlap * pair.fixed_weight * seen[-2]
        data = (weighted * diff).sum() / overlap.sum().clamp(min=1.0)
        outside = ((1.0 - overlap) * u.pow(2).sum(0)).mean()
        loss = data / scale + weight * diffusion(u) + outside_weight * outside
        if points is not None and point_weight > 0:
            loss = loss + point_weight * point_loss(u, points)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return smoothed(params)
