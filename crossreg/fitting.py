"""Least-squares transforms from corresponding points: Kabsch-Umeyama for any number of points, closed
forms for RANSAC's minimal samples, and the test that rejects samples too thin to fix a transform.

:func:`fit` is the general solver (batched SVD). RANSAC fits tens of thousands of minimal samples per
registration, and a batched LAPACK SVD of 3 x 3 matrices costs tens of microseconds each on a CPU, so
:func:`fit_minimal` solves the samples of rigid and similarity fits in closed form instead, with the
same answer to rounding: in 2D, Procrustes is one angle (an ``atan2``); in 3D, three points span a
plane, every optimal rotation maps the source plane onto the target plane (the cross-covariance has
rank 2, so the third singular value is 0 and flipping its axis costs nothing), and the rotation is the
better of the optimal in-plane rotation and in-plane reflection (normal flipped), each one angle.
"""

from __future__ import annotations

import numpy as np
import torch

from crossreg.homography import degenerate_quads, fit_homography
from crossreg.transform import Model

Points = torch.Tensor | np.ndarray
# A sample thinner than this fraction of the inlier threshold (RMS distance of its points from their
# best-fitting line, or plane for affine 3D) leaves part of the transform fixed only by noise.
MIN_SPREAD_FRACTION = 0.5


def sample_size(model: Model, ndim: int) -> int:
    """Matches in a minimal sample: d for rigid and similarity (2 in 2D, 3 in 3D), d + 1 for affine,
    4 for a (2D) homography."""
    return {"affine": ndim + 1, "homography": 4}.get(model, ndim)


def fit(
    src: Points, dst: Points, model: Model = "rigid", weights: Points | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares ``(matrix, translation)`` with ``dst ~ matrix @ src + translation``.

    src, dst: (k, d) or batched (B, k, d) corresponding points (any d; float64 if not floating).
    weights: (k,) or (B, k) non-negative, default uniform.
    Returns matrix (d, d) or (B, d, d) and translation (d,) or (B, d), in src's dtype and device.
    rigid: proper rotation (det +1, Kabsch); similarity: rotation times isotropic scale (Umeyama);
    affine: unconstrained linear least squares (minimum-norm where under-determined).
    """
    src, dst, w = _as_batch(src, dst, weights)
    w = w / w.sum(dim=-1, keepdim=True)
    src_mean = (w[..., None] * src).sum(dim=-2)
    dst_mean = (w[..., None] * dst).sum(dim=-2)
    s, t = src - src_mean[..., None, :], dst - dst_mean[..., None, :]
    if model == "affine":
        root_w = w.sqrt()[..., None]
        matrix = (torch.linalg.pinv(root_w * s) @ (root_w * t)).mT
    elif model in ("rigid", "similarity"):
        matrix = _rotation(s, t, w, with_scale=model == "similarity")
    else:
        raise ValueError(f"fit takes rigid, similarity or affine (fit_homography: homography), got {model!r}")
    translation = dst_mean - (matrix @ src_mean[..., None])[..., 0]
    return matrix, translation


def _rotation(s: torch.Tensor, t: torch.Tensor, w: torch.Tensor, with_scale: bool) -> torch.Tensor:
    """Umeyama: rotation (times scale) (..., d, d) best mapping centred s to centred t, (..., k, d)."""
    cov = t.mT @ (w[..., None] * s)
    u, sigma, vt = torch.linalg.svd(cov)
    # Flip the weakest axis when U V^T would be a reflection: the closest proper rotation.
    sign = torch.where(torch.linalg.det(u @ vt) < 0, -1.0, 1.0).to(s.dtype)
    e = torch.ones_like(sigma)
    e[..., -1] = sign
    rotation = u @ (e[..., None] * vt)
    if not with_scale:
        return rotation
    src_var = (w * (s * s).sum(dim=-1)).sum(dim=-1).clamp_min(torch.finfo(s.dtype).tiny)
    return ((sigma * e).sum(dim=-1) / src_var)[..., None, None] * rotation


def _as_batch(
    src: Points, dst: Points, weights: Points | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """src, dst as (..., k, d) float tensors of one dtype and device, weights (..., k) to match."""
    src = torch.as_tensor(src)
    src = src if src.is_floating_point() else src.double()
    dst = torch.as_tensor(dst, dtype=src.dtype, device=src.device)
    if src.shape != dst.shape or src.dim() not in (2, 3):
        raise ValueError(f"src and dst must both be (k, d) or (B, k, d), got {src.shape} and {dst.shape}")
    if weights is None:
        return src, dst, torch.ones(src.shape[:-1], dtype=src.dtype, device=src.device)
    w = torch.as_tensor(weights, dtype=src.dtype, device=src.device)
    return src, dst, w.expand(src.shape[:-1])


def fit_homogeneous(src: torch.Tensor, dst: torch.Tensor, model: Model) -> torch.Tensor:
    """(..., d+1, d+1) homogeneous matrices of ``model`` fitted to src, dst (..., k, d)."""
    if model == "homography":
        return fit_homography(src, dst)
    return _homogeneous(*fit(src, dst, model))


def _homogeneous(matrix: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(..., d+1, d+1) from matrices (..., d, d) and translations (..., d)."""
    d = matrix.shape[-1]
    h = torch.zeros(*matrix.shape[:-2], d + 1, d + 1, dtype=matrix.dtype, device=matrix.device)
    h[..., :d, :d], h[..., :d, d], h[..., d, d] = matrix, translation, 1.0
    return h


def fit_minimal(src: torch.Tensor, dst: torch.Tensor, model: Model) -> torch.Tensor:
    """(B, d+1, d+1) fits of ``model`` to minimal samples src, dst (B, k, d): :func:`fit_homogeneous`'s
    answer, in closed form (module docstring) for rigid and similarity samples of 2D or 3-point 3D
    matches; NaN for samples that fix no transform (coincident or collinear points), which
    :func:`degenerate` rejects anyway."""
    d, k = src.shape[-1], src.shape[-2]
    if model not in ("rigid", "similarity") or (d == 3 and k != 3) or d not in (2, 3):
        return fit_homogeneous(src, dst, model)
    src_mean, dst_mean = src.mean(dim=-2), dst.mean(dim=-2)
    s, t = src - src_mean[..., None, :], dst - dst_mean[..., None, :]
    matrix, trace = _procrustes_2d(s, t) if d == 2 else _procrustes_planar(s, t)
    if model == "similarity":  # Umeyama's scale: the optimal trace over the source's spread
        matrix = matrix * (trace / s.square().sum(dim=(-2, -1)))[..., None, None]
    return _homogeneous(matrix, dst_mean - (matrix @ src_mean[..., None])[..., 0])


def _procrustes_2d(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation (B, 2, 2) maximising ``sum_i t_i . R s_i`` over centred s, t (B, k, 2), and that
    maximum (B,)."""
    cos = (s * t).sum(dim=(-2, -1))
    sin = (s[..., 0] * t[..., 1] - s[..., 1] * t[..., 0]).sum(dim=-1)
    norm = torch.hypot(cos, sin)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return rotation / norm[..., None, None], norm


def _procrustes_planar(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The proper rotation (B, 3, 3) maximising ``sum_i t_i . R s_i`` over centred 3-point samples
    s, t (B, 3, 3), and that maximum (B,): the better in-plane rotation or reflection, between frames
    of the two planes (module docstring)."""
    frame_s, frame_t = _plane_frame(s), _plane_frame(t)
    p, q = s @ frame_s, t @ frame_t  # in-plane coordinates (third ~ 0)
    px, py, qx, qy = p[..., 0], p[..., 1], q[..., 0], q[..., 1]
    cos, sin = (px * qx + py * qy).sum(dim=-1), (px * qy - py * qx).sum(dim=-1)
    cos_f, sin_f = (px * qx - py * qy).sum(dim=-1), (py * qx + px * qy).sum(dim=-1)
    turn, flip = torch.hypot(cos, sin), torch.hypot(cos_f, sin_f)
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    rotation = torch.stack([cos / turn, -sin / turn, zero, sin / turn, cos / turn, zero, zero, zero, one], -1)
    mirror = torch.stack(
        [cos_f / flip, sin_f / flip, zero, sin_f / flip, -cos_f / flip, zero, zero, zero, -one], -1
    )
    in_plane = torch.where((turn >= flip)[..., None], rotation, mirror).reshape(*s.shape[:-2], 3, 3)
    return frame_t @ in_plane @ frame_s.mT, torch.maximum(turn, flip)


def _plane_frame(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) orthonormal frames (columns: in-plane a, b, normal) of 3-point samples x (B, 3, 3)."""
    edge = x[..., 1, :] - x[..., 0, :]
    normal = torch.linalg.cross(edge, x[..., 2, :] - x[..., 0, :], dim=-1)
    a = edge / torch.linalg.norm(edge, dim=-1, keepdim=True)
    n = normal / torch.linalg.norm(normal, dim=-1, keepdim=True)
    return torch.stack([a, torch.linalg.cross(n, a, dim=-1), n], dim=-1)


def degenerate(src: torch.Tensor, dst: torch.Tensor, model: Model, threshold_mm: float) -> torch.Tensor:
    """(B,) whether samples src, dst (B, k, d) are degenerate (see :func:`thin`; homographies:
    crossreg.homography.degenerate_quads, with the same fraction of the threshold)."""
    if model == "homography":
        return degenerate_quads(src, dst, MIN_SPREAD_FRACTION * threshold_mm)
    return thin(torch.stack([src, dst]), threshold_mm).any(dim=0)


def thin(points: torch.Tensor, threshold_mm: float) -> torch.Tensor:
    """(..., B) whether samples (..., B, k, d) are near-collinear or near-duplicate, given the threshold.

    The k points must span k - 1 dimensions: the RMS distance of the points from their best-fitting
    (k - 2)-flat (a point for k = 2, a line for k = 3, a plane for k = 4) must reach a fraction of the
    threshold. That distance is the (k - 1)-th singular value of the centred points over sqrt(k): in
    closed form for k = 2 (their norm) and k = 3 (the smaller root of ``x^2 - trace x + area``, with
    ``area`` the squared cross product of two edges over 3), from an SVD otherwise.
    """
    k = points.shape[-2]
    centred = points - points.mean(dim=-2, keepdim=True)
    if k == 2:
        squared = centred.square().sum(dim=(-2, -1))
    elif k == 3:
        squared = _smaller_root(centred.square().sum(dim=(-2, -1)), _cross_squared(points) / 3)
    else:
        squared = torch.linalg.svdvals(centred)[..., k - 2].square()
    return squared / k < (MIN_SPREAD_FRACTION * threshold_mm) ** 2


def _cross_squared(points: torch.Tensor) -> torch.Tensor:
    """(...,) squared cross product (2D: squared determinant) of the two edges of triangles (..., 3, d)."""
    e1, e2 = points[..., 1, :] - points[..., 0, :], points[..., 2, :] - points[..., 0, :]
    if points.shape[-1] == 2:
        return (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]).square()
    return torch.linalg.cross(e1, e2, dim=-1).square().sum(dim=-1)


def _smaller_root(trace: torch.Tensor, product: torch.Tensor) -> torch.Tensor:
    """The smaller root of ``x^2 - trace x + product`` (both roots real and >= 0), without cancellation;
    0 where the trace is."""
    root = torch.sqrt((trace.square() - 4 * product).clamp_min(0.0))
    return torch.where(trace > 0, 2 * product / (trace + root), 0.0)
