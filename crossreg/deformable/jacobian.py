"""Folding of a displacement field: the Jacobian determinant of ``x -> x + u(x)``, and a guard that
smooths the field until it has no negative determinant where it matters."""

from __future__ import annotations

import logging

import torch

from crossreg.filters import gaussian_blur

log = logging.getLogger(__name__)
_MAX_SMOOTHINGS = 10


def jacobian_determinant(displacement_vox: torch.Tensor) -> torch.Tensor:
    """det(I + grad u) ``(*shape)`` of a field ``(d, *shape)`` in voxels, ``(x, y, z)`` components,
    by central differences (one-sided at the edges)."""
    d = displacement_vox.shape[0]
    # grads[i][j] = d u_i / d x_j; array axis of x_j is d - j (channel first, then z, y, x).
    grads = [[torch.gradient(displacement_vox[i], dim=d - 1 - j)[0] for j in range(d)] for i in range(d)]
    jac = torch.stack([torch.stack(row, dim=-1) for row in grads], dim=-2)
    return torch.linalg.det(jac + torch.eye(d, device=jac.device, dtype=jac.dtype))


def unfold(displacement_vox: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The field smoothed (Gaussian, 1 voxel) until no determinant in ``region`` ``(*shape)`` bool is
    negative, at most a few times; and how many smoothings it took."""
    for n in range(_MAX_SMOOTHINGS + 1):
        folded = int((jacobian_determinant(displacement_vox)[region] <= 0).sum())
        if folded == 0:
            return displacement_vox, n
        log.info("deformable field folds at %d voxels: smoothing it", folded)
        displacement_vox = gaussian_blur(displacement_vox, 1.0)
    return displacement_vox, _MAX_SMOOTHINGS
