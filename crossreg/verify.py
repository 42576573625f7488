"""verify: whether a transform RANSAC found can be stood behind, and how well it is determined.

Three checks, each a fact about the answer rather than about the matches alone:
- overlap: the transform must leave the two fields of view overlapping (else NoOverlapError);
- confidence: RANSAC's chance that the inliers are not chance (crossreg.estimate), times the
  probability that they pin the transform down over that overlap better than one match does
  (:func:`crossreg.estimate.determination`); under ``min_confidence`` the answer is refused;
- round trip: the share of inliers that are fixed points of matching under the transform: a query
  point, carried into the reference image by the transform and described there, matches back to
  itself (UAE's cycle consistency). Repeated structure can gather agreeing matches, but the
  descriptors at the places it maps to point elsewhere. :func:`round_trip` is the one implementation,
  for any pair of described images and any transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crossreg.correspond import Correspondences
from crossreg.describe import Described
from crossreg.errors import NoOverlapError, RegistrationFailed
from crossreg.estimate import Estimate, determination
from crossreg.features import Description
from crossreg.image import Image
from crossreg.matching import MatchConfig, match
from crossreg.plan import Plan
from crossreg.resample import resample
from crossreg.transform import Transform

#: A transform that overlaps less of the smaller field of view than this leaves nothing to register.
MIN_OVERLAP_FRACTION = 0.01


@dataclass(frozen=True)
class Verdict:
    """What the verify stage found: ``confidence`` in [0, 1] (refused below ``min_confidence``) and
    ``round_trip``, the share of inliers whose round trip comes back within the RANSAC threshold."""

    confidence: float
    round_trip: float


@dataclass(frozen=True, eq=False)
class RoundTrip:
    """Where points came back to: ``back_mm`` ``(N, d)`` and ``error_mm`` ``(N,)`` from their start."""

    back_mm: torch.Tensor
    error_mm: torch.Tensor


def verify(found: Estimate, pairs: Correspondences, plan: Plan, min_confidence: float) -> Verdict:
    """The verdict on ``found`` (fixed -> moving); raises NoOverlapError or RegistrationFailed."""
    fixed, moving = plan.side("fixed").image, plan.side("moving").image
    overlap = overlap_mask(fixed, moving, found.transform)
    region_mm = fixed.grid.index_to_world(np.argwhere(overlap)[:, ::-1].astype(float))
    inliers = found.inliers.cpu()
    confidence = found.confidence * determination(pairs.fixed_mm[inliers], region_mm)
    if confidence < min_confidence:
        raise RegistrationFailed(
            f"{found.n_inliers} of {len(pairs)} matches agree on a transform, but they could be chance "
            f"or leave it loose (confidence {confidence:.2f} < {min_confidence:g}): no transform "
            "written; check that the images overlap, or lower --min-confidence to see the guess"
        )
    to_reference = found.transform if plan.query.role == "fixed" else found.transform.inverse()
    trip = round_trip(pairs.query, pairs.reference.description, to_reference, pairs.query_mm[inliers])
    back = (trip.error_mm <= plan.ransac.threshold_mm).float().mean() if len(trip.error_mm) else 0.0
    return Verdict(confidence, float(back))


def round_trip(
    start: Described, other: Description, to_other: Transform, points_mm: torch.Tensor
) -> RoundTrip:
    """``points_mm`` ``(N, d)`` of the described image ``start``, each carried into the other image by
    ``to_other``, described there, and matched back to the nearest in descriptor of ``start``'s
    described points: a point whose trip ends where it began is a fixed point of the matching."""
    there = torch.from_numpy(to_other.apply(points_mm.double().numpy()))
    found = match(other.at(there), start.descriptors, MatchConfig(max_ratio=1.0, mutual=False))
    back = start.points_mm[found.i1.cpu()].double()
    return RoundTrip(back, torch.linalg.norm(back - points_mm.double(), dim=1))


def overlap_mask(fixed: Image, moving: Image, transform: Transform) -> np.ndarray:
    """Bool array on the fixed working grid: voxels in both fields of view under ``transform``
    (fixed -> moving); raises NoOverlapError if (almost) none."""
    landed = resample(moving, fixed.grid, transform).mask & fixed.valid_mask()
    # A share of the smaller field of view: a small cone inside a whole-brain MRI overlaps fully.
    # Both working grids share a spacing, so voxel counts compare.
    smaller = min(fixed.valid_mask().sum(), moving.valid_mask().sum())
    fraction = landed.sum() / max(smaller, 1)
    if fraction < MIN_OVERLAP_FRACTION:
        raise NoOverlapError(
            f"the matched transform overlaps only {100 * fraction:.1f}% of the smaller field of view: "
            "the images do not overlap"
        )
    return landed
