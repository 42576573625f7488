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
  for any pair of described images and any transform;
- ambiguity: how large a second, different transform the matches hold, over the best's size
  (:func:`ambiguity`): near 0 when one transform stands alone, near 1 when two explain the matches
  equally well (a mirror image, a repeated structure);
- agreement: how sharply the transform is a minimum of the MIND-SSC distance between the two images
  on their overlap, against the transform shifted a few mm each way (:func:`agreement`): near 0 or
  negative when the images do not look alike there, whatever the matches say; under
  ``min_agreement`` the answer is refused.

Confidence and agreement are gates (calibrated by scripts/confidence_roc.py, docs/reliability.md);
round trip and ambiguity are reported (``Result``) for a user to judge.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from crossreg.config import RegisterConfig
from crossreg.correspond import Correspondences
from crossreg.describe import Described
from crossreg.errors import NoOverlapError, RegistrationFailed
from crossreg.estimate import Estimate, RansacConfig, determination, estimate, sample_size
from crossreg.features import Description
from crossreg.features.mind import MindConfig, mind_maps
from crossreg.image import Image, crop_to_mask
from crossreg.matching import MatchConfig, match
from crossreg.plan import Plan
from crossreg.resample import resample, sample_world
from crossreg.transform import Model, Transform

#: A transform that overlaps less of the smaller field of view than this leaves nothing to register.
MIN_OVERLAP_FRACTION = 0.01
#: Ambiguity looks for a second transform among the matches further than this many RANSAC thresholds
#: from where the best one sends them: nearer ones are the best's, off by a little more than it allows.
AMBIGUITY_HALO = 2.0
#: Agreement compares the transform with it shifted by this, mm, both ways along each world axis: more
#: than the RANSAC threshold a right answer may be off by, less than the anatomy's repeat.
PROBE_MM = 4.0
#: Agreement reads the overlap's voxels whose fixed MIND-SSC varies across channels more than this
#: quantile of the overlap's (flat tissue looks alike at every shift), at most AGREEMENT_POINTS of
#: them (a seeded draw), within a box of at most AGREEMENT_BOX_MM a side around the overlap's middle.
STRUCTURE_QUANTILE = 0.5
AGREEMENT_POINTS = 4096
AGREEMENT_BOX_MM = 96.0
#: The MIND-SSC agreement compares: one neighbour distance, to stay cheap.
AGREEMENT_MIND = MindConfig(dilations_mm=(2.0,))


@dataclass(frozen=True)
class Verdict:
    """What the verify stage found (module docstring): ``confidence`` in [0, 1] (refused below
    ``min_confidence``); ``round_trip`` in [0, 1], the share of inliers whose round trip comes back
    within the RANSAC threshold; ``ambiguity`` in [0, 1], the second-best transform's size over the
    best's; ``agreement`` in [-1, 1], how sharply the images agree at the transform."""

    confidence: float
    round_trip: float
    ambiguity: float
    agreement: float


@dataclass(frozen=True, eq=False)
class RoundTrip:
    """Where points came back to: ``back_mm`` ``(N, d)`` and ``error_mm`` ``(N,)`` from their start."""

    back_mm: torch.Tensor
    error_mm: torch.Tensor


def verify(found: Estimate, pairs: Correspondences, plan: Plan, config: RegisterConfig) -> Verdict:
    """The verdict on ``found`` (fixed -> moving); raises NoOverlapError or RegistrationFailed."""
    fixed, moving = plan.side("fixed").image, plan.side("moving").image
    overlap = overlap_mask(fixed, moving, found.transform)
    region_mm = fixed.grid.index_to_world(np.argwhere(overlap)[:, ::-1].astype(float))
    inliers = found.inliers.cpu()
    confidence = found.confidence * determination(pairs.fixed_mm[inliers], region_mm)
    if confidence < config.min_confidence:
        raise RegistrationFailed(
            f"{found.n_inliers} of {len(pairs)} matches agree on a transform, but they could be chance "
            f"or leave it loose (confidence {confidence:.2f} < {config.min_confidence:g}): no transform "
            "written; check that the images overlap, or lower --min-confidence to see the guess"
        )
    local = agreement(fixed, moving, found.transform, overlap, config.device, config.seed)
    if local < config.min_agreement:
        raise RegistrationFailed(
            f"{found.n_inliers} of {len(pairs)} matches agree on a transform, but the images do not look "
            f"alike under it (agreement {local:.3f} < {config.min_agreement:g}): likely repeated or "
            "absent anatomy; no transform written (lower --min-agreement to see the guess)"
        )
    to_reference = found.transform if plan.query.role == "fixed" else found.transform.inverse()
    trip = round_trip(pairs.query, pairs.reference.description, to_reference, pairs.query_mm[inliers])
    back = (trip.error_mm <= plan.ransac.threshold_mm).float().mean() if len(trip.error_mm) else 0.0
    second = ambiguity(
        found,
        pairs.fixed_mm,
        pairs.moving_mm,
        region_mm,
        config.model,
        plan.ransac,
        config.seed,
        config.device,
    )
    return Verdict(confidence, float(back), second, local)


def ambiguity(
    found: Estimate,
    fixed_mm: torch.Tensor,
    moving_mm: torch.Tensor,
    region_mm: np.ndarray,
    model: Model,
    ransac: RansacConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """How large a second, different transform the matches ``fixed_mm``, ``moving_mm`` ``(M, d)``
    hold next to ``found``, in [0, 1]: 0 when none, 1 when it is as large.

    RANSAC (same settings and seed, on ``device``) runs again on the matches ``found`` leaves further than
    :data:`AMBIGUITY_HALO` thresholds from their partners (nearer ones are ``found``'s, imprecise).
    The second needs only a minimal sample, whatever the gates: ambiguity measures its size, not
    whether it would pass. Sizes are inliers as independent evidence (:attr:`Estimate.n_independent`)
    beyond the minimal sample (a sample's fit agrees with the sample whatever the images): the second's
    over the best's. The second counts only if it moves ``region_mm`` ``(P, d)`` (the overlap) by more
    than the RANSAC threshold on average from where ``found`` does; 0 too when the rest hold no transform.
    """
    k = sample_size(model, fixed_mm.shape[1])
    residual = np.linalg.norm(found.transform.apply(fixed_mm.numpy()) - moving_mm.numpy(), axis=1)
    rest = torch.from_numpy(residual > AMBIGUITY_HALO * ransac.threshold_mm)
    loose = replace(ransac, min_inliers=k, min_inlier_fraction=0.0)
    try:
        second = estimate(fixed_mm[rest], moving_mm[rest], model, loose, seed, device)
    except RegistrationFailed:
        return 0.0
    apart = np.linalg.norm(second.transform.apply(region_mm) - found.transform.apply(region_mm), axis=1)
    if len(region_mm) == 0 or apart.mean() <= ransac.threshold_mm:
        return 0.0
    return min(1.0, max(second.n_independent - k, 0) / max(found.n_independent - k, 1))


def agreement(
    fixed: Image,
    moving: Image,
    transform: Transform,
    overlap: np.ndarray,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> float:
    """How sharply ``transform`` (fixed -> moving) minimises the MIND-SSC distance of the working
    images ``fixed`` and ``moving`` over ``overlap`` (bool, fixed grid), in [-1, 1].

    The moving image is resampled onto (a box of) the fixed grid through ``transform``; both are
    described by MIND-SSC on ``device``; the cost of a shift ``s`` is the mean absolute descriptor
    difference between the fixed image at ``p`` and the resampled moving image at ``p + s``, over
    structured overlap points ``p`` (module constants). Agreement is the mean over the 2d shifts of
    :data:`PROBE_MM` along each world axis of ``(cost(s) - cost(0)) / cost(s)``, each clipped to
    [-1, 1]: near 1 for a sharp minimum at the transform, near 0 or below where the images do not
    agree there. 0 when no overlap point has a full set of probes.
    """
    box = _agreement_box(fixed, overlap)
    if not box.valid_mask().any():
        return 0.0
    seen = resample(moving, box.grid, transform)
    described = mind_maps(box, AGREEMENT_MIND, device)
    other = mind_maps(seen, AGREEMENT_MIND, device)
    inside = torch.from_numpy(seen.valid_mask()).to(device, torch.float32)[None]
    points = _structured_points(box, described, seed)
    d = fixed.ndim
    shifts = torch.cat([torch.zeros(1, d), PROBE_MM * torch.eye(d), -PROBE_MM * torch.eye(d)]).to(points)
    at = points[None] + shifts[:, None]  # (2d+1, P, d)
    full = (sample_world(inside, box.grid, at)[0] > 0.999).all(dim=0)
    if not full.any():
        return 0.0
    here = sample_world(described, box.grid, points[full])  # (C, P)
    there = sample_world(other, box.grid, at[:, full])  # (C, 2d+1, P)
    cost = (there - here[:, None]).abs().mean(dim=(0, 2))
    gain = ((cost[1:] - cost[0]) / cost[1:].clamp_min(1e-12)).clamp(-1.0, 1.0)
    return float(gain.mean())


def _agreement_box(fixed: Image, overlap: np.ndarray) -> Image:
    """``fixed`` cut to the overlap (within a box of AGREEMENT_BOX_MM around its middle) plus room for
    the probes and MIND-SSC's neighbourhoods; its mask is the overlap there."""
    index = np.argwhere(overlap)
    spacing = np.asarray(fixed.spacing_mm[::-1])
    middle, half = np.median(index, axis=0), AGREEMENT_BOX_MM / 2 / spacing
    lo = np.maximum(index.min(axis=0), np.floor(middle - half)).astype(int)
    hi = np.minimum(index.max(axis=0) + 1, np.ceil(middle + half)).astype(int)
    kept = np.zeros_like(overlap)
    kept[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    reach_mm = PROBE_MM + max(AGREEMENT_MIND.dilations_mm) + 3 * AGREEMENT_MIND.patch_sigma_mm
    margin = int(np.ceil(reach_mm / spacing.min()))
    return crop_to_mask(fixed.with_array(fixed.array, overlap & kept), margin)


def _structured_points(box: Image, described: torch.Tensor, seed: int) -> torch.Tensor:
    """World points ``(P, d)`` (on ``described``'s device) of ``box``'s masked voxels whose MIND-SSC
    ``(C, *box.shape)`` varies across channels more than :data:`STRUCTURE_QUANTILE` of theirs, at
    most :data:`AGREEMENT_POINTS` of them drawn with ``seed``."""
    mask = torch.from_numpy(box.valid_mask()).to(described.device)
    spread = described[:, mask].var(dim=0)
    index = torch.nonzero(mask)[spread >= torch.quantile(spread, STRUCTURE_QUANTILE)]
    draw = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))[:AGREEMENT_POINTS]
    index_xyz = index[draw.to(index.device)].flip(1).cpu().double().numpy()
    return torch.from_numpy(box.grid.index_to_world(index_xyz)).to(described.device, torch.float32)


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
