"""Registration accuracy in world millimetres: target registration error (TRE), matching precision,
success rate, area under the cumulative error curve.

Transforms follow crossreg's convention (fixed points -> moving points); errors are measured in the
moving image's space, which for a rigid true transform equals the error in fixed space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crossreg.deformation import DeformableTransform
from crossreg.image import Image
from crossreg.transform import AffineTransform


def tre_mm(
    estimated: AffineTransform | DeformableTransform,
    true: AffineTransform | DeformableTransform,
    points_fixed_mm: np.ndarray,
) -> np.ndarray:
    """Target registration error per point, ``(N,)`` mm: ``|estimated(p) - true(p)|``.

    points_fixed_mm: ``(N, d)`` world points of the fixed image (e.g. ``Case.landmarks_fixed_mm``).
    """
    p = np.asarray(points_fixed_mm, float)
    return np.linalg.norm(estimated.apply(p) - true.apply(p), axis=1)


@dataclass(frozen=True)
class TreSummary:
    """Statistics of per-point TRE, mm."""

    mean_mm: float
    median_mm: float
    p90_mm: float
    max_mm: float


def summarize_tre(errors_mm: np.ndarray) -> TreSummary:
    """Mean, median, 90th percentile and maximum of per-point errors ``(N,)`` mm."""
    e = np.asarray(errors_mm, float)
    if e.size == 0:
        raise ValueError("summarize_tre: no errors to summarize")
    return TreSummary(float(e.mean()), float(np.median(e)), float(np.percentile(e, 90)), float(e.max()))


def matching_precision(
    points_fixed_mm: np.ndarray,
    points_moving_mm: np.ndarray,
    true: AffineTransform | DeformableTransform,
    threshold_mm: float = 3.0,
) -> float:
    """Fraction of matches ``(N, d)`` / ``(N, d)`` whose moving point lies within ``threshold_mm`` of
    where the true transform puts its fixed point; 0 when there are no matches (nothing was found).
    """
    pf, pm = np.asarray(points_fixed_mm, float), np.asarray(points_moving_mm, float)
    if pf.shape != pm.shape:
        raise ValueError(f"matching_precision: {pf.shape} fixed vs {pm.shape} moving points")
    if len(pf) == 0:
        return 0.0
    return float(np.mean(np.linalg.norm(true.apply(pf) - pm, axis=1) <= threshold_mm))


def success_rate(tre_means_mm: np.ndarray, threshold_mm: float = 3.0) -> float:
    """Fraction of cases whose mean TRE ``(C,)`` mm is at most ``threshold_mm``; NaN (failed) counts as
    a failure."""
    t = np.asarray(tre_means_mm, float)
    if t.size == 0:
        raise ValueError("success_rate: no cases")
    return float(np.mean(np.nan_to_num(t, nan=np.inf) <= threshold_mm))


def error_auc(errors_mm: np.ndarray, threshold_mm: float) -> float:
    """Area under the cumulative error curve up to ``threshold_mm``, normalised to [0, 1]: the mean over
    cases of ``max(0, 1 - error / threshold_mm)``, NaN (no answer) counted as an infinite error.

    errors_mm: ``(C,)`` one error per case (e.g. its mean TRE). The share of cases with an error of at
    most ``e``, integrated over ``e`` in [0, threshold_mm] and divided by ``threshold_mm`` (the pose AUC
    of SuperGlue and LoFTR): 1 when every case is exact, 0 when none is within the threshold.
    """
    e = np.nan_to_num(np.asarray(errors_mm, float), nan=np.inf)
    if e.size == 0 or threshold_mm <= 0:
        raise ValueError(f"error_auc: need cases and a positive threshold, got {e.size} and {threshold_mm}")
    return float(np.mean(np.clip(1.0 - e / threshold_mm, 0.0, None)))


def folded_share(
    transform: AffineTransform | DeformableTransform, fixed: Image, spacing_mm: float = 2.0
) -> float:
    """Share (0-1) of the fixed image's field of view where ``transform`` folds: ``det J <= 0`` of
    ``x -> transform(x)`` on the fixed image's working grid of ``spacing_mm`` (the linear part has
    determinant 1 for a rigid, so this is the share of its deformation field); 0 for a linear transform."""
    if isinstance(transform, AffineTransform):
        return 0.0
    from crossreg.deformable.jacobian import jacobian_determinant
    from crossreg.resample import grid_points_mm, working_image

    work = working_image(fixed, spacing_mm)
    points = grid_points_mm(work.grid, dtype=torch.float64)
    moved_vox = torch.movedim(transform.apply_tensor(points) / spacing_mm, -1, 0)
    det = jacobian_determinant(moved_vox - torch.movedim(points / spacing_mm, -1, 0))
    region = torch.from_numpy(work.valid_mask())
    return float((det[region] <= 0).double().mean()) if region.any() else 0.0
