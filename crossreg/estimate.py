"""Robust transforms from point matches: LO-RANSAC over batched Kabsch-Umeyama least squares, or
(2D homographies) batched normalised DLT (crossreg.homography).

Every hypothesis of a chunk is fitted to its minimal sample at once (batched SVD) and scored against all
matches at once (a homography by its transfer error, mm); the best one (most inliers, truncated-quadratic
MSAC error to break ties) is then polished by local optimisation: re-fit on all its inliers, re-score,
repeat.

Points are world millimetres. ``estimate(src_mm, dst_mm)`` maps ``src`` to ``dst``: pass fixed-image
points as ``src`` to get crossreg's fixed -> moving registration transform.

Confidence. Under the null hypothesis that the matches are random (each ``dst`` point unrelated to its
``src`` point), a match lands within ``threshold_mm`` of where a transform sends it with probability
``p0 = ball volume / volume the dst points spread over`` (a box of side ``sqrt(12) * sd`` along each
principal axis, at least ``2 * threshold_mm``). A hypothesis fitted to ``k`` sampled matches then
gathers ``X ~ Binomial(M - k, p0)`` further inliers by chance. ``confidence = 1 - min(1, H * P[X >=
n_inliers - k])``, with ``H`` the number of hypotheses tried (a Bonferroni bound over the search):
one minus an upper bound on the chance that random matches would have produced this many inliers.
It is near 1 when the inliers cannot be chance and 0 when they are as many as chance gives; it does
not measure accuracy (see ``rmse_mm``) and is optimistic when wrong matches are not spread at random
(repeated structures). Dense matching makes wrong matches of neighbouring points agree with each other
(their descriptors overlap), so with ``independence_mm`` > 0 matches and inliers are counted as the
number of cells of that size they occupy (the fewer of the src and dst counts): a patch of agreeing
neighbours is one piece of evidence, not dozens.

Determination. Inliers that are not chance can still leave the transform loose where it matters: a
few matches in a strip or a blob fix the rotation poorly, and the error grows with the distance from
them. :func:`determination` is the probability that the transform is known, over a region of interest
(the images' overlap), better than one match is: with each inlier off by isotropic noise of ``s`` mm
per axis, the least-squares rigid fit errs at a point ``q`` by a Gaussian of covariance
``s^2 (I / K + [r]_x^T J^-1 [r]_x)`` (``r = q - centroid``, ``J`` the inliers' inertia tensor about
their centroid, ``K`` their number); its mean square over the region, in units of ``s^2``, is ``u^2``
and ``determination = P[chi2_d < d / u^2]``. It does not depend on ``s``. crossreg's registration
confidence is ``confidence * determination`` (crossreg.verify).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from crossreg.errors import InvalidConfigError, RegistrationFailed
from crossreg.homography import degenerate_quads, fit_homography, transfer_squared
from crossreg.transform import AffineTransform, HomographyTransform, Model, Transform

logger = logging.getLogger(__name__)

Points = torch.Tensor | np.ndarray
MODELS = ("rigid", "similarity", "affine", "homography")
# A sample thinner than this fraction of the inlier threshold (RMS distance of its points from their
# best-fitting line, or plane for affine 3D) leaves part of the transform fixed only by noise.
_MIN_SPREAD_FRACTION = 0.5


@dataclass(frozen=True)
class RansacConfig:
    """Settings of :func:`estimate`: LO-RANSAC and its failure tests; lengths in world millimetres."""

    # Inlier radius, mm (> 0): a match is an inlier if the transform sends its src point within this of
    # its dst point. Samples whose points spread less than half of it are rejected as degenerate.
    threshold_mm: float = 4.0
    # Minimal-sample hypotheses drawn (>= 1); their number also enters the confidence's Bonferroni bound.
    iterations: int = 4000
    # Fewer inliers than this (>= 0) raises RegistrationFailed.
    min_inliers: int = 8
    # So does a smaller share of the matches as inliers (0-1; 0: no such test). Dense matching, where
    # every query is matched, uses it: two unrelated surfaces can agree on a few dozen matches.
    min_inlier_fraction: float = 0.0
    # Local-optimisation rounds (>= 0): re-fit on all inliers and re-score, until the inliers are stable.
    refine_iterations: int = 5
    # Hypotheses fitted and scored at once (>= 1); memory ~ chunk x M x d float64 for M matches.
    chunk: int = 500
    # Cell side, mm: the confidence counts matches and inliers as the cells they occupy, so neighbouring
    # matches count once (module docstring); 0 counts every match.
    independence_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.threshold_mm <= 0:
            raise ValueError(f"RansacConfig.threshold_mm must be > 0, got {self.threshold_mm}")
        if self.iterations < 1 or self.chunk < 1:
            raise ValueError(
                f"RansacConfig.iterations and chunk must be >= 1, got {self.iterations}, {self.chunk}"
            )
        if self.min_inliers < 0 or self.refine_iterations < 0:
            raise ValueError("RansacConfig.min_inliers and refine_iterations must be >= 0")


@dataclass(frozen=True, eq=False)
class Estimate:
    """A transform fitted to matches, with the evidence for it.

    transform: maps src points to dst points (``model`` set to the estimated family).
    inliers: (M,) bool CPU tensor, matches within ``threshold_mm`` under ``transform``.
    n_inliers: ``inliers.sum()``. rmse_mm: root-mean-square residual over the inliers, mm (NaN if none).
    confidence: in [0, 1], one minus a bound on the chance that random matches give as many inliers
        (see the module docstring).
    n_independent: the inliers as the confidence counts them: the cells of ``independence_mm`` they
        occupy (``n_inliers`` when it is 0).
    """

    transform: Transform
    inliers: torch.Tensor
    n_inliers: int
    rmse_mm: float
    confidence: float
    n_independent: int


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


def estimate(
    src_mm: Points,
    dst_mm: Points,
    model: Model = "rigid",
    config: RansacConfig = RansacConfig(),
    seed: int = 0,
) -> Estimate:
    """The transform mapping ``src_mm`` to ``dst_mm`` that most matches agree with (LO-RANSAC).

    src_mm, dst_mm: (M, d) matched world points, d = 2 or 3, numpy or torch (computed in float64 on
    the CPU). Deterministic for a given ``seed``; on clean data the result does not depend on the order
    of the matches (beyond rounding). Raises :class:`RegistrationFailed` with fewer than
    ``max(min_inliers, minimal sample)`` matches, when every sample is degenerate, or with fewer than
    ``config.min_inliers`` inliers or under ``config.min_inlier_fraction`` of the matches as inliers.
    """
    src, dst = _as_points(src_mm, dst_mm, model)
    k = sample_size(model, src.shape[1])
    if src.shape[0] < max(k, config.min_inliers):
        raise RegistrationFailed(_too_few(src.shape[0], max(k, config.min_inliers), "matches", model))
    h = _best_hypothesis(src, dst, model, config, seed)
    h, inliers = _local_optimisation(src, dst, h, model, config)
    n = int(inliers.sum())
    if n < config.min_inliers:
        raise RegistrationFailed(_too_few(n, config.min_inliers, "inlier matches", model))
    if n < config.min_inlier_fraction * src.shape[0]:
        raise RegistrationFailed(
            f"only {n} of {src.shape[0]} matches agree on a {model} transform "
            f"(< {100 * config.min_inlier_fraction:g}%): the images probably show no common anatomy"
        )
    rmse = float(_squared_residuals(src, dst, h, model)[inliers].mean().sqrt())
    p_null = _chance_inlier_probability(dst, config.threshold_mm)
    n_eff, m_eff = n, src.shape[0]
    if config.independence_mm > 0:
        n_eff = _cells(src[inliers], dst[inliers], config.independence_mm)
        m_eff = _cells(src, dst, config.independence_mm)
    confidence = _confidence(n_eff, m_eff, k, p_null, config.iterations + config.refine_iterations)
    logger.debug(
        "estimate %s: %d/%d inliers, rmse %.3f mm, confidence %.3f", model, n, len(src), rmse, confidence
    )
    return Estimate(_transform(h, model), inliers, n, rmse, confidence, n_eff)


def _transform(h: torch.Tensor, model: Model) -> Transform:
    """The transform of a homogeneous matrix (d+1, d+1) fitted in ``model``."""
    if model == "homography":
        return HomographyTransform(h.numpy().copy())
    d = h.shape[0] - 1
    return AffineTransform(h[:d, :d].numpy().copy(), h[:d, d].numpy().copy(), model)


def _fit_homogeneous(src: torch.Tensor, dst: torch.Tensor, model: Model) -> torch.Tensor:
    """(..., d+1, d+1) homogeneous matrices of ``model`` fitted to src, dst (..., k, d)."""
    if model == "homography":
        return fit_homography(src, dst)
    matrix, translation = fit(src, dst, model)
    d = src.shape[-1]
    h = torch.zeros(*matrix.shape[:-2], d + 1, d + 1, dtype=matrix.dtype)
    h[..., :d, :d], h[..., :d, d], h[..., d, d] = matrix, translation, 1.0
    return h


def _as_points(src_mm: Points, dst_mm: Points, model: Model) -> tuple[torch.Tensor, torch.Tensor]:
    """src, dst as (M, d) float64 CPU tensors, checked."""
    src = torch.as_tensor(src_mm).detach().to("cpu", torch.float64)
    dst = torch.as_tensor(dst_mm).detach().to("cpu", torch.float64)
    if src.shape != dst.shape or src.dim() != 2 or src.shape[1] not in (2, 3):
        raise ValueError(f"src_mm and dst_mm must both be (M, 2) or (M, 3), got {src.shape} and {dst.shape}")
    if not (torch.isfinite(src).all() and torch.isfinite(dst).all()):
        raise ValueError("src_mm and dst_mm must be finite (no NaN or inf coordinates)")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if model == "homography" and src.shape[1] != 2:
        raise InvalidConfigError(
            f"model 'homography' is a 2D projective transform, and these points are {src.shape[1]}D: "
            "use rigid, similarity or affine for 3D images"
        )
    return src, dst


def _too_few(count: int, needed: int, what: str, model: Model) -> str:
    return (
        f"only {count} {what} (need {needed}) for a {model} fit: the images may not overlap or the "
        "features do not match; check that the field of view and initial orientation are right, try "
        "more keypoints, or raise RansacConfig.threshold_mm"
    )


def _best_hypothesis(
    src: torch.Tensor, dst: torch.Tensor, model: Model, config: RansacConfig, seed: int
) -> torch.Tensor:
    """The minimal-sample fit (homogeneous (d+1, d+1)) with most inliers, MSAC breaking ties."""
    generator = torch.Generator().manual_seed(seed)
    k = sample_size(model, src.shape[1])
    best_score, best = -math.inf, None
    for start in range(0, config.iterations, config.chunk):
        count = min(config.chunk, config.iterations - start)
        # Drawn with replacement: a repeated match has zero spread and is rejected as degenerate.
        sample = torch.randint(src.shape[0], (count, k), generator=generator)
        h = _fit_homogeneous(src[sample], dst[sample], model)
        score = _score(src, dst, h, model, config.threshold_mm)
        usable = ~_degenerate(src[sample], dst[sample], model, config.threshold_mm)
        score = torch.where(usable & torch.isfinite(score), score, -math.inf)
        i = int(score.argmax())
        if score[i] > best_score:
            best_score, best = float(score[i]), h[i]
    if best is None:
        raise RegistrationFailed(
            f"every sampled set of {k} matches was degenerate (collinear, or closer together than "
            f"{_MIN_SPREAD_FRACTION * config.threshold_mm:g} mm): the matched points do not span the "
            "image; detect keypoints over a larger region or lower RansacConfig.threshold_mm"
        )
    return best


def _score(
    src: torch.Tensor, dst: torch.Tensor, h: torch.Tensor, model: Model, threshold_mm: float
) -> torch.Tensor:
    """(B,) inlier count plus a fraction < 1 that is larger for smaller truncated-quadratic (MSAC) error."""
    thr_sq = threshold_mm**2
    residual_sq = _squared_residuals(src, dst, h, model)
    count = (residual_sq < thr_sq).sum(dim=-1)
    msac = residual_sq.clamp(max=thr_sq).sum(dim=-1)
    return count - msac / (src.shape[0] * thr_sq + 1.0)


def _squared_residuals(src: torch.Tensor, dst: torch.Tensor, h: torch.Tensor, model: Model) -> torch.Tensor:
    """Squared distances (..., M), mm^2, from the transforms h (..., d+1, d+1) of src to dst; src, dst
    (M, d). A homography's is its transfer error (crossreg.homography.transfer_squared)."""
    if model == "homography":
        return transfer_squared(h, src, dst)
    d = src.shape[1]
    # Coordinates first, (..., d, M): one GEMM for all hypotheses, and a fast sum over the short d axis.
    difference = (h[..., :d, :d] @ src.mT).add_(h[..., :d, d:]).sub_(dst.mT)
    return difference.square_().sum(dim=-2)


def _degenerate(src: torch.Tensor, dst: torch.Tensor, model: Model, threshold_mm: float) -> torch.Tensor:
    """(B,) whether samples src, dst (B, k, d) are degenerate (see :func:`_thin`; homographies:
    crossreg.homography.degenerate_quads, with the same fraction of the threshold)."""
    if model == "homography":
        return degenerate_quads(src, dst, _MIN_SPREAD_FRACTION * threshold_mm)
    return _thin(torch.stack([src, dst]), threshold_mm).any(dim=0)


def _thin(points: torch.Tensor, threshold_mm: float) -> torch.Tensor:
    """(..., B) whether samples (..., B, k, d) are near-collinear or near-duplicate, given the threshold.

    The k points must span k - 1 dimensions: the RMS distance of the points from their best-fitting
    (k - 2)-flat (a point for k = 2, a line for k = 3, a plane for k = 4) must reach a fraction of the
    threshold.
    """
    k = points.shape[-2]
    centred = points - points.mean(dim=-2, keepdim=True)
    spread = torch.linalg.svdvals(centred)[..., k - 2] / math.sqrt(k)
    return spread < _MIN_SPREAD_FRACTION * threshold_mm


def _local_optimisation(
    src: torch.Tensor, dst: torch.Tensor, h: torch.Tensor, model: Model, config: RansacConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-fit on all inliers until the inlier set is stable: homogeneous matrix, inliers (M,) bool.

    Each re-fit minimises the squared residuals of the current inliers, all below threshold, so the
    truncated-quadratic (MSAC) cost never rises: the loop cannot make the hypothesis worse, and on clean
    data it reaches the same inlier set, hence the same fit, whatever hypothesis it starts from. (A
    homography's re-fit minimises the algebraic error of normalised DLT, close to the transfer error
    at inlier residuals.)
    """
    thr_sq = config.threshold_mm**2
    inliers = _squared_residuals(src, dst, h, model) < thr_sq
    for _ in range(config.refine_iterations):
        if int(inliers.sum()) < sample_size(model, src.shape[1]):
            break
        h = _fit_homogeneous(src[inliers], dst[inliers], model)
        previous, inliers = inliers, _squared_residuals(src, dst, h, model) < thr_sq
        if torch.equal(inliers, previous):
            break
    return h, inliers


def _chance_inlier_probability(dst: torch.Tensor, threshold_mm: float) -> float:
    """Chance that a random dst point (M, d) lies within threshold_mm of a given point (module doc)."""
    d = dst.shape[1]
    variances = torch.linalg.eigvalsh(torch.cov(dst.T)).clamp_min(0.0)
    extent = (12.0 * variances).sqrt().clamp_min(2.0 * threshold_mm)
    ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1) * threshold_mm**d
    return min(1.0, ball / float(extent.prod()))


def _cells(src: torch.Tensor, dst: torch.Tensor, size_mm: float) -> int:
    """How many cells of side ``size_mm`` the points ``(M, d)`` occupy: the fewer of src and dst."""
    return min(len(torch.unique(torch.floor(p / size_mm), dim=0)) for p in (src, dst))


def _confidence(n_inliers: int, n_matches: int, k: int, p_null: float, n_hypotheses: int) -> float:
    """1 - min(1, n_hypotheses * P[Binomial(n_matches - k, p_null) >= n_inliers - k])."""
    log_p = min(0.0, math.log(n_hypotheses) + _log_binomial_tail(n_inliers - k, n_matches - k, p_null))
    return max(0.0, -math.expm1(log_p))


def _log_binomial_tail(successes: int, trials: int, p: float) -> float:
    """log P[Binomial(trials, p) >= successes]."""
    if successes <= 0 or p >= 1.0:
        return 0.0
    if successes > trials or p <= 0.0:
        return -math.inf
    j = torch.arange(successes, trials + 1, dtype=torch.float64)
    log_pmf = (
        math.lgamma(trials + 1)
        - torch.lgamma(j + 1)
        - torch.lgamma(trials - j + 1)
        + j * math.log(p)
        + (trials - j) * math.log1p(-p)
    )
    return float(torch.logsumexp(log_pmf, dim=0))


def determination(inliers_mm: Points, region_mm: Points) -> float:
    """Probability that a rigid fit to ``inliers_mm`` (K, d) errs less over ``region_mm`` (P, d) than one
    match does (module docstring); 0 with fewer than 2 distinct inliers."""
    x = torch.as_tensor(inliers_mm, dtype=torch.float64)
    q = torch.as_tensor(region_mm, dtype=torch.float64)
    k, d = x.shape
    if k < 2 or len(q) == 0:
        return 0.0
    centroid = x.mean(dim=0)
    centred, r = x - centroid, q - centroid
    scatter = centred.T @ centred
    if d == 2:  # rotation is one angle: J is the polar moment of inertia
        lever = (r * r).sum(dim=1) / scatter.trace().clamp_min(1e-12)
    else:
        inertia = scatter.trace() * torch.eye(3, dtype=torch.float64) - scatter
        j_inv = torch.linalg.pinv(inertia)
        lever = (r * r).sum(dim=1) * j_inv.trace() - torch.einsum("pi,ij,pj->p", r, j_inv, r)
    u_sq = float((d / k + lever).mean()) / d  # per-axis variance over the region, in units of s^2
    return _chi2_cdf(d / max(u_sq, 1e-12), d)


def _chi2_cdf(x: float, d: int) -> float:
    """P[chi2 with d = 2 or 3 degrees of freedom < x]."""
    if d == 2:
        return -math.expm1(-x / 2)
    return math.erf(math.sqrt(x / 2)) - math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
