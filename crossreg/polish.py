"""polish: the transform RANSAC found, refined by intensity on the images' overlap (crossreg.refine),
kept only while it stays where the matches put it."""

from __future__ import annotations

import logging

import numpy as np

from crossreg.config import RegisterConfig
from crossreg.correspond import Correspondences
from crossreg.estimate import Estimate
from crossreg.image import Image
from crossreg.plan import Plan
from crossreg.refine import refine
from crossreg.transform import Transform

log = logging.getLogger(__name__)


def polish(
    fixed: Image, moving: Image, found: Estimate, pairs: Correspondences, plan: Plan, config: RegisterConfig
) -> Transform:
    """``found.transform`` refined by ``config.refine`` (unchanged if None, and for a homography), or
    kept where refinement jumps away from the inliers."""
    if config.refine is None:
        return found.transform
    if config.model == "homography":
        log.info("intensity refinement refines rigid, similarity and affine transforms: kept the homography")
        return found.transform
    refined = refine(fixed, moving, found.transform, config.model, config.refine, config.device).transform
    inliers_mm = pairs.fixed_mm[found.inliers.cpu()].numpy()
    return kept_refinement(found.transform, refined, inliers_mm, plan.ransac.threshold_mm)


def kept_refinement(
    ransac: Transform, refined: Transform, inliers_mm: np.ndarray, threshold_mm: float
) -> Transform:
    """``refined``, unless it moves an inlier point ``(K, d)`` further than ``threshold_mm`` from where
    the matches put it: refinement polishes, and a jump that far means the intensity metric found
    another optimum (seen on CT, where soft tissue is flat), not a better one."""
    shift = np.linalg.norm(refined.apply(inliers_mm) - ransac.apply(inliers_mm), axis=1)
    if shift.size and shift.max() > threshold_mm:
        log.warning(
            "refinement moved inlier points by up to %.1f mm (> %.1f mm): kept the RANSAC transform",
            shift.max(),
            threshold_mm,
        )
        return ransac
    return refined
