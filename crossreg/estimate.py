"""Robust transforms from point matches: LO-RANSAC over batched Kabsch-Umeyama least squares, or
(2D homographies) batched normalised DLT (crossreg.homography).

Every hypothesis is fitted to its minimal sample at once (closed forms, crossreg.fitting) and scored
against all matches (a homography by its transfer error, mm); the best one (most inliers,
truncated-quadratic MSAC error to break ties, then the first drawn) is then polished by local
optimisation: re-fit on all its inliers, re-score, repeat.

Search. Scoring is almost all of RANSAC's work (hypotheses x matches residuals), so a linear model's
hypotheses are first screened in float32, a chunk at a time, as one matrix product each (:func:`_screen`):
that gives, for every hypothesis, bounds on its exact score that hold whatever the rounding. Only the
hypotheses whose upper bound reaches the best lower bound (a handful of 20000) are then scored exactly,
in float64, and the best of them is the one an exact scoring of every hypothesis would pick. All of it
runs on the ``device`` asked for, with no per-chunk synchronisation. Every hypothesis is always scored
(no early exit): dense matching's inlier ratios of a few percent would need ~all of them anyway
(``log(0.01) / log(1 - 0.04^3)`` is 70000), and their number is the confidence's Bonferroni factor.

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
from collections.abc import Callable
from dataclasses import dataclass

import torch

from crossreg.errors import InvalidConfigError, RegistrationFailed
from crossreg.fitting import (
    MIN_SPREAD_FRACTION,
    Points,
    degenerate,
    fit,
    fit_homogeneous,
    fit_minimal,
    sample_size,
)
from crossreg.homography import transfer_squared
from crossreg.transform import AffineTransform, HomographyTransform, Model, Transform

logger = logging.getLogger(__name__)

MODELS = ("rigid", "similarity", "affine", "homography")
#: The screen's float32 squared residuals are within this many float32 epsilons of the square of the
#: largest length they combine (:func:`_screen`): 50 times the largest error measured on bench matches.
_SCREEN_ROUNDING = 64
#: The rounding unit of float32 matrix products at each of torch's float32 matmul precisions.
_MATMUL_EPSILON = {"highest": torch.finfo(torch.float32).eps, "high": 2.0**-10, "medium": 2.0**-7}
#: The screen's blocks of hypotheses hold at most this many residuals (16 MB of float32), or one chunk.
_SCREEN_RESIDUALS = 2**22

__all__ = ["MODELS", "Estimate", "RansacConfig", "determination", "estimate", "fit", "sample_size"]


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
    # Minimal samples drawn at once (>= 1): the same seed and chunk give the same samples. The float32
    # screen takes at least this many hypotheses at once, more while their residuals fit in 16 MB.
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


def estimate(
    src_mm: Points,
    dst_mm: Points,
    model: Model = "rigid",
    config: RansacConfig = RansacConfig(),
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Estimate:
    """The transform mapping ``src_mm`` to ``dst_mm`` that most matches agree with (LO-RANSAC).

    src_mm, dst_mm: (M, d) matched world points, d = 2 or 3, numpy or torch. The hypotheses are fitted
    and screened on ``device``; the best one's local optimisation, the inliers and the confidence are
    computed in float64 on the CPU, so any device gives the same answer (to rounding). Deterministic
    for a given ``seed``; on clean data the result does not depend on the order
    of the matches (beyond rounding). Raises :class:`RegistrationFailed` with fewer than
    ``max(min_inliers, minimal sample)`` matches, when every sample is degenerate, or with fewer than
    ``config.min_inliers`` inliers or under ``config.min_inlier_fraction`` of the matches as inliers.
    """
    src, dst = _as_points(src_mm, dst_mm, model)
    k = sample_size(model, src.shape[1])
    if src.shape[0] < max(k, config.min_inliers):
        raise RegistrationFailed(_too_few(src.shape[0], max(k, config.min_inliers), "matches", model))
    h = _best_hypothesis(src, dst, model, config, seed, torch.device(device))
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
    src: torch.Tensor, dst: torch.Tensor, model: Model, config: RansacConfig, seed: int, device: torch.device
) -> torch.Tensor:
    """The minimal-sample fit (homogeneous (d+1, d+1), float64 CPU) with most inliers, MSAC breaking ties
    and then the order of drawing: every hypothesis fitted at once on ``device``, screened in float32,
    the few that can be best scored exactly (module docstring)."""
    k = sample_size(model, src.shape[1])
    sample = _draw(src.shape[0], k, config, seed).to(device)
    src, dst = src.to(device), dst.to(device)
    usable = ~degenerate(src[sample], dst[sample], model, config.threshold_mm)
    d = src.shape[1]
    h = torch.full((len(sample), d + 1, d + 1), math.nan, dtype=src.dtype, device=device)
    # Degenerate samples are never fitted: a homography's SVD fails on the non-finite rows they give.
    h[usable] = fit_minimal(src[sample[usable]], dst[sample[usable]], model)
    usable &= torch.isfinite(h).flatten(1).all(dim=1)

    def exact(part: torch.Tensor) -> torch.Tensor:
        return _score(src, dst, part, model, config.threshold_mm)

    low, high = (
        (_chunked(exact, h, config.chunk),) * 2 if model == "homography" else _screen(src, dst, h, config)
    )
    low, high = (torch.where(usable & torch.isfinite(b), b, -math.inf) for b in (low, high))
    bound = float(low.max())
    if not math.isfinite(bound):
        raise RegistrationFailed(
            f"every sampled set of {k} matches was degenerate (collinear, or closer together than "
            f"{MIN_SPREAD_FRACTION * config.threshold_mm:g} mm): the matched points do not span the "
            "image; detect keypoints over a larger region or lower RansacConfig.threshold_mm"
        )
    near = torch.nonzero(high >= bound)[:, 0]
    scores = torch.nan_to_num(_chunked(exact, h[near], config.chunk), nan=-math.inf)
    return h[near[scores.argmax()]].cpu()


def _draw(n_matches: int, k: int, config: RansacConfig, seed: int) -> torch.Tensor:
    """``config.iterations`` minimal samples (H, k) of match indices, drawn with replacement (a repeated
    match has zero spread and is rejected as degenerate) a chunk at a time: the same seed and chunk,
    the same samples."""
    generator = torch.Generator().manual_seed(seed)
    counts = [
        min(config.chunk, config.iterations - start) for start in range(0, config.iterations, config.chunk)
    ]
    return torch.cat([torch.randint(n_matches, (count, k), generator=generator) for count in counts])


def _chunked(score: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, chunk: int) -> torch.Tensor:
    """``score`` (B,) of hypotheses h (B, d+1, d+1), a chunk of them at a time."""
    return torch.cat([score(h[start : start + chunk]) for start in range(0, len(h), chunk)])


def _screen(
    src: torch.Tensor, dst: torch.Tensor, h: torch.Tensor, config: RansacConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds (B,) float64 on the :func:`_score` of linear hypotheses h (B, d+1, d+1).

    A squared residual ``|A s + t - d|^2`` is a dot product of a vector of the hypothesis (A^T A, A^T t,
    A, t) with one of the match (s s^T, s, d s^T, d, |d|^2), so each chunk's residuals are one float32
    matrix product. Coordinates are centred first; the rounding error of a residual then stays below
    :data:`_SCREEN_ROUNDING` float32 epsilons of ``(|A| max|s| + |t| + max|d|)^2``, and a residual that
    close to the threshold counts as maybe in, maybe out.
    """
    d, thr_sq, n = src.shape[1], config.threshold_mm**2, src.shape[0]
    src_mean, dst_mean = src.mean(dim=0), dst.mean(dim=0)
    s, t = src - src_mean, dst - dst_mean
    a = h[:, :d, :d]
    shift = h[:, :d, d] + a @ src_mean - dst_mean  # the translation between centred coordinates
    rows, cols = torch.triu_indices(d, d, device=src.device)
    twice = torch.where(rows == cols, 1.0, 2.0).to(src)  # off-diagonal products appear twice in s^T G s
    per_match = torch.cat(
        [s[:, rows] * s[:, cols], s, (t[:, :, None] * s[:, None, :]).flatten(1), t, t.square().sum(1, True)],
        1,
    )
    per_hypothesis = torch.cat(
        [
            (a.mT @ a)[:, rows, cols] * twice,
            2 * (a.mT @ shift[..., None])[..., 0],
            -2 * a.flatten(1),
            -2 * shift,
            torch.ones_like(shift[:, :1]),
        ],
        1,
    )
    size = torch.linalg.matrix_norm(a) * s.norm(dim=1).max() + shift.norm(dim=1) + t.norm(dim=1).max()
    # torch may do float32 products in TF32 or bfloat16 (set_float32_matmul_precision): wider bounds.
    eps = _MATMUL_EPSILON[torch.get_float32_matmul_precision()]
    tolerance = (_SCREEN_ROUNDING * eps * size.square()).float()
    per_match = per_match.T.float().contiguous()
    per_hypothesis, bias = per_hypothesis.float(), shift.square().sum(dim=1).float()
    # Blocks of at least `chunk` hypotheses, as many as keep their residuals under _SCREEN_RESIDUALS:
    # few, large operations (every operation on a CPU waits for all of its threads).
    block, sure, maybe, msac = max(config.chunk, _SCREEN_RESIDUALS // n), [], [], []
    for start in range(0, len(h), block):
        part = slice(start, start + block)
        squared = torch.addmm(bias[part, None], per_hypothesis[part], per_match)
        margin = tolerance[part, None]
        sure.append((squared < thr_sq - margin).sum(dim=1))
        maybe.append((squared < thr_sq + margin).sum(dim=1))
        msac.append(squared.clamp_(max=thr_sq).sum(dim=1))
    # Each clamped residual is off by at most its margin; their float32 sum adds its own rounding.
    slack = n * (tolerance.double() + _SCREEN_ROUNDING * eps * thr_sq)
    msac_sum, scale = torch.cat(msac).double(), n * thr_sq + 1.0
    return torch.cat(sure) - (msac_sum + slack) / scale, torch.cat(maybe) - (msac_sum - slack) / scale


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
        h = fit_homogeneous(src[inliers], dst[inliers], model)
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
