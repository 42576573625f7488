"""Homographies (2D projective transforms) from point matches: batched normalised DLT.

A homography ``H`` (3 x 3, defined up to scale) maps a 2D point ``x`` to ``(H[:2] @ [x, 1]) / (H[2] @
[x, 1])``. Four matches, no three of them collinear, fix it. The direct linear transform (DLT) writes
each match as two linear equations in the nine entries of ``H`` and takes the unit vector that fits them
best (the last right singular vector); Hartley's normalisation first moves each point set to its
centroid and scales it to a mean distance of sqrt(2) from it, which makes the equations well
conditioned for coordinates of hundreds of millimetres. Everything is batched: B hypotheses are one
SVD of a (B, 2k, 9) tensor.

A homography that sends a point across its horizon (the line where ``H[2] @ [x, 1] = 0``) folds the
image there; a point whose homogeneous coordinate has the other sign than at the sample's centroid has
no meaningful residual, and counts as infinitely far off.
"""

from __future__ import annotations

import itertools
import math

import torch

#: Triples of a 4-point sample, each of which must span a triangle.
_TRIPLES = torch.tensor(list(itertools.combinations(range(4), 3)))


def _normaliser(points: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) Hartley normalisation of points (..., k, 2) with weights (..., k): centroid to 0,
    weighted mean distance from it to sqrt(2)."""
    w = w / w.sum(dim=-1, keepdim=True)
    centroid = (w[..., None] * points).sum(dim=-2)
    distance = (w * torch.linalg.norm(points - centroid[..., None, :], dim=-1)).sum(dim=-1)
    scale = math.sqrt(2.0) / distance.clamp_min(torch.finfo(points.dtype).tiny)
    t = torch.zeros(*points.shape[:-2], 3, 3, dtype=points.dtype, device=points.device)
    t[..., 0, 0] = t[..., 1, 1] = scale
    t[..., :2, 2] = -scale[..., None] * centroid
    t[..., 2, 2] = 1.0
    return t


def _homogeneous(points: torch.Tensor) -> torch.Tensor:
    """(..., k, 3) homogeneous coordinates of points (..., k, 2)."""
    return torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)


def fit_homography(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(..., 3, 3) homography sending src to dst: normalised DLT, least squares in the algebraic error.

    src, dst: (..., k, 2) float corresponding points, k >= 4; weights: (..., k) non-negative, default
    uniform (each match's two equations are scaled by its square root). Scaled so that ``H[2, 2] = 1``
    where that entry is not zero, else to unit Frobenius norm; NaN where the SVD fails.
    """
    w = torch.ones(src.shape[:-1], dtype=src.dtype, device=src.device) if weights is None else weights
    t_src, t_dst = _normaliser(src, w), _normaliser(dst, w)
    x = _homogeneous(src) @ t_src.mT
    y = (_homogeneous(dst) @ t_dst.mT)[..., :2]
    zero = torch.zeros_like(x)
    # Rows of x -> y: [x^T, 0, -y1 x^T] and [0, x^T, -y2 x^T] (H's last row scaled to the third coordinate).
    rows_u = torch.cat([x, zero, -y[..., :1] * x], dim=-1)
    rows_v = torch.cat([zero, x, -y[..., 1:] * x], dim=-1)
    root_w = w.sqrt()[..., None]
    a = torch.cat([root_w * rows_u, root_w * rows_v], dim=-2)
    # Padded to 9 rows so a 4-point sample (8 equations) still has a full 9 x 9 V.
    a = torch.cat([a, torch.zeros_like(a[..., :1, :])], dim=-2)
    h_norm = torch.linalg.svd(a).Vh[..., -1, :].reshape(*a.shape[:-2], 3, 3)
    h = torch.linalg.solve(t_dst, h_norm @ t_src)
    corner = h[..., 2:, 2:]
    norm = torch.linalg.matrix_norm(h)[..., None, None]
    return h / torch.where(corner.abs() > 1e-12 * norm, corner, norm)


def project(h: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (M, 2) through homographies (..., 3, 3): mapped points (..., M, 2) and their homogeneous
    third coordinate (..., M) before the division."""
    mapped = h[..., :2, :2] @ points.mT + h[..., :2, 2:]
    w = h[..., 2:, :2] @ points.mT + h[..., 2:, 2:]
    return (mapped / w).mT, w[..., 0, :]


def transfer_squared(h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(..., M) squared transfer errors |H(src) - dst|^2 (mm^2) of matches src, dst (M, 2); inf for a
    point on the other side of the horizon than the matches' centroid (module docstring)."""
    mapped, w = project(h, src)
    _, w_centre = project(h, src.mean(dim=0, keepdim=True))
    squared = (mapped - dst).square().sum(dim=-1)
    return torch.where(w * w_centre > 0, squared, math.inf)


def degenerate_quads(src: torch.Tensor, dst: torch.Tensor, min_height_mm: float) -> torch.Tensor:
    """(B,) whether 4-point samples src, dst (B, 4, 2) cannot fix a homography.

    Degenerate: three points of either set near a line (a triangle of theirs is lower than
    ``min_height_mm`` over its longest side), or a triangle flipped in one set but not in the others,
    which no homography without a fold maps.
    """
    signs, low = [], torch.zeros(src.shape[0], dtype=torch.bool)
    for points in (src, dst):
        a, b, c = points[:, _TRIPLES].unbind(dim=-2)  # (B, 4, 2) each
        ab, ac, bc = b - a, c - a, c - b
        cross = ab[..., 0] * ac[..., 1] - ab[..., 1] * ac[..., 0]  # twice the signed area
        longest = torch.stack([ab, ac, bc]).norm(dim=-1).amax(dim=0)
        low |= (cross.abs() / longest.clamp_min(1e-12) < min_height_mm).any(dim=-1)
        signs.append(torch.sign(cross))
    agree = signs[0] * signs[1]
    folded = (agree != agree[:, :1]).any(dim=-1)
    return low | folded
