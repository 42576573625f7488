"""register(fixed, moving) -> Result: the whole pipeline, one function.

working grids -> keypoints or dense grids -> descriptors (MIND-SSC or CrossKEY) -> matching (mutual
NN, or nearest candidate, CrossKEY's shortlist re-ranked with MIND-SSC) -> RANSAC -> refinement.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from crossreg.errors import CrossregError, DimensionMismatchError, NoOverlapError, RegistrationFailed
from crossreg.estimate import RansacConfig, determination, estimate
from crossreg.features.crosskey import DescriptorNet, describe_crosskey, load_model
from crossreg.features.mind import MindConfig, dense_mind, describe_mind
from crossreg.image import Image, fov_mask
from crossreg.keypoints import KeypointConfig, Keypoints, detect_keypoints, grid_points
from crossreg.matching import MatchConfig, Matches, match, match_shortlisted
from crossreg.refine import RefineConfig, refine
from crossreg.resample import resample, working_image
from crossreg.result import Result
from crossreg.transform import AffineTransform, Model

log = logging.getLogger(__name__)

#: ``--matching auto`` matches MIND-SSC densely where the smaller field of view is under this share of
#: the larger (benchmark ultrasound cones: 0.7-9.5% of the head, ``scripts/bench_case_stats.py``;
#: cropped slabs: 30-80% of it, ``synthetic_cases``' ``fov_range``).
DENSE_FOV_RATIO = 0.25

#: Working grids aim for this many voxels along the longest axis (3D, 2D): enough anatomy per
#: descriptor neighbourhood, few enough voxels for a CPU.
WORKING_SIZE = {3: 96, 2: 192}


@dataclass(frozen=True)
class DenseConfig:
    """Dense matching (UAE-style), no keypoint detection: the image with the larger field of view is
    described at a grid of candidates every ``spacing_mm`` of its FOV, the smaller at a grid of queries
    every ``query_spacing_mm`` (both rounded up to whole working voxels; coarser where there would be
    over ``max_queries``); both grids keep
    ``border_mm`` inside the FOV. Each query takes its nearest candidate
    (no ratio or mutual test: in a small cone most points are ambiguous, and RANSAC with
    ``ransac_iterations`` hypotheses, not a test, sorts the few right matches from the rest). Nothing
    needs to be re-detected in both images. Neighbouring queries see overlapping anatomy, so their
    wrong matches agree: RANSAC's confidence counts matches within ``independence_mm`` as one. Every
    query is matched, so the inliers are the share of the smaller image the transform explains: under
    ``min_inlier_fraction`` it is refused (two unrelated skin surfaces can agree on a few dozen).
    With CrossKEY descriptors a query takes, of its ``shortlist`` nearest candidates in the learned
    descriptor, the one nearest in learned and MIND-SSC descriptors together (0: the learned nearest):
    the learned descriptor finds the anatomy brain-wide, MIND-SSC's 3x3x3 layout places it to the
    voxel (docs/benchmarks.md: the shipped model on 40 ultrasound cones, 90% success and 44%
    precision against 82% and 25% for its descriptor alone), at the cost of MIND-SSC on the
    shortlists only."""

    spacing_mm: float = 2.0
    query_spacing_mm: float = 3.0
    max_queries: int = 1500
    border_mm: float = 2.0
    ransac_iterations: int = 20000
    independence_mm: float = 8.0
    min_inlier_fraction: float = 0.05
    shortlist: int = 64


@dataclass(frozen=True)
class RegisterConfig:
    """Everything that determines a registration (with the seed).

    features: ``mind`` (MIND-SSC, hand-crafted, any modality pair) or ``crosskey`` (learned descriptors
    for MRI/ultrasound, from ``weights``: a file of ``crossreg train``, or the shipped general model).
    dense: dense matching (:class:`DenseConfig`), or None: ``keypoints`` on both sides, mutual-NN +
    ratio ``matching`` (CrossKEY's sparse way; precise where both images show the same anatomy, blind
    where the small image's keypoints do not recur in the large one). ``auto``: dense for crosskey,
    whose descriptors are trained for it, and for MIND-SSC where one field of view is under
    :data:`DENSE_FOV_RATIO` of the other (an ultrasound cone in a brain MRI: sparse 0%, dense 80% on
    the benchmark); sparse otherwise, which is as accurate and ten times faster on shared anatomy
    (docs/benchmarks.md).
    min_confidence: a transform less confident than this (docs/reliability.md) is a failure.
    """

    model: Model = "rigid"
    features: Literal["mind", "crosskey"] = "mind"
    weights: str | None = None
    working_spacing_mm: float | None = None
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    dense: DenseConfig | Literal["auto"] | None = "auto"
    mind: MindConfig = field(default_factory=MindConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    ransac: RansacConfig = field(default_factory=RansacConfig)
    refine: RefineConfig | None = field(default_factory=RefineConfig)
    min_confidence: float = 0.5
    device: str = "cpu"
    seed: int = 0

    def dense_matching(self, fov_ratio: float) -> DenseConfig | None:
        """The dense matching settings in force (``auto`` resolved), None for sparse matching, for
        images whose smaller field of view is ``fov_ratio`` of the larger one's volume."""
        if self.dense == "auto":
            wanted = self.features == "crosskey" or fov_ratio < DENSE_FOV_RATIO
            return DenseConfig() if wanted else None
        return self.dense


def dense_setting(matching: str) -> DenseConfig | Literal["auto"] | None:
    """``RegisterConfig.dense`` for a matching mode name: ``auto``, ``dense`` or ``sparse``."""
    settings: dict[str, DenseConfig | Literal["auto"] | None] = {
        "auto": "auto",
        "dense": DenseConfig(),
        "sparse": None,
    }
    if matching not in settings:
        raise CrossregError(f"matching {matching!r}: use auto, dense or sparse")
    return settings[matching]


def working_spacing(fixed: Image, moving: Image, config: RegisterConfig) -> float:
    """Isotropic spacing (mm) of the grids keypoints are found on."""
    if config.working_spacing_mm is not None:
        return float(config.working_spacing_mm)
    extent = max(np.ptp(im.grid.corners_mm(), axis=0).max() for im in (fixed, moving))
    finest = min(min(fixed.spacing_mm), min(moving.spacing_mm))
    return float(max(extent / WORKING_SIZE[fixed.ndim], finest))


@dataclass(frozen=True, eq=False)
class _Side:
    """One image prepared for matching: working image, keypoints, descriptors."""

    work: Image
    keypoints: Keypoints
    descriptors: torch.Tensor
    mind_maps: torch.Tensor


def _prepare(
    work: Image,
    region: np.ndarray,
    config: RegisterConfig,
    seed: int,
    net: DescriptorNet | None,
    dense: DenseConfig | None,
    candidates: bool,
) -> _Side:
    """Keypoints of a working image inside ``region`` (its field of view), or (``dense``) its grid of
    candidates or of queries there, descriptors, and the dense MIND-SSC maps (MIND-SSC's descriptors
    sample them; so do the network's input and the re-ranking of its shortlists)."""
    if dense is not None:
        if candidates:
            points = grid_points(work, region, dense.border_mm, dense.spacing_mm)
        else:
            points = grid_points(work, region, dense.border_mm, dense.query_spacing_mm, dense.max_queries)
        kps = Keypoints(torch.from_numpy(points).float(), torch.zeros(len(points)))
    else:
        kps = detect_keypoints(work, config.keypoints, mask=region, seed=seed)
    maps = dense_mind(work, config.mind).to(config.device)
    if net is not None:
        network_maps = maps if config.mind == MindConfig() else None  # the network reads the default
        return _Side(work, kps, describe_crosskey(net, work, kps.points_mm, network_maps), maps)
    desc = describe_mind(work, kps.points_mm.to(config.device), config.mind, dense=maps)
    return _Side(work, kps, desc, maps)


def _network(config: RegisterConfig, ndim: int) -> DescriptorNet | None:
    """The descriptor network ``config`` asks for (None for MIND), checked against the images."""
    if config.features == "mind":
        return None
    if config.features != "crosskey":
        raise CrossregError(f"features={config.features!r}: use 'mind' or 'crosskey'")
    net, _ = load_model(config.weights, config.device)
    if net.config.ndim != ndim:
        raise CrossregError(
            f"the descriptor model is {net.config.ndim}D but the images are {ndim}D; use a model "
            f"trained on {ndim}D images"
        )
    return net


def register(
    fixed: Image,
    moving: Image,
    config: RegisterConfig | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> Result:
    """Register ``moving`` to ``fixed``: a transform mapping fixed points to moving points.

    Raises RegistrationFailed when too few matches agree on a transform, NoOverlapError when the
    found transform leaves the images without common field of view.
    """
    config = config or RegisterConfig()
    if fixed.ndim != moving.ndim:
        raise DimensionMismatchError(f"fixed image is {fixed.ndim}D but moving image is {moving.ndim}D")
    stage = on_stage or (lambda name: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    net = _network(config, fixed.ndim)
    spacing = working_spacing(fixed, moving, config)
    f_work, m_work = working_image(fixed, spacing), working_image(moving, spacing)
    f_region, m_region = _fov_region(f_work), _fov_region(m_work)
    f_fov, m_fov = int(f_region.sum()), int(m_region.sum())  # voxels of one spacing: volumes compare
    fov_ratio = min(f_fov, m_fov) / max(f_fov, m_fov, 1)
    dense = config.dense_matching(fov_ratio)
    points = "dense grids" if dense is not None else "keypoints"
    log.info("%s matching: the smaller field of view is %.0f%% of the larger", points, 100 * fov_ratio)
    stage(f"{points} and {config.features} descriptors on {spacing:.2g} mm grids")
    # Dense: the image with the larger field of view holds the candidates. Sparse: keypoints on both.
    candidates = None if dense is None else "fixed" if f_fov >= m_fov else "moving"
    f_side = _prepare(f_work, f_region, config, config.seed, net, dense, candidates == "fixed")
    m_side = _prepare(m_work, m_region, config, config.seed + 1, net, dense, candidates == "moving")
    lap("features")
    stage(f"matching {len(f_side.keypoints)} x {len(m_side.keypoints)} points")
    shortlist = dense.shortlist if dense is not None and net is not None else 0
    matches = _match(f_side, m_side, config, candidates, shortlist)
    f_pts = f_side.keypoints.points_mm[matches.i0.cpu()].double()
    m_pts = m_side.keypoints.points_mm[matches.i1.cpu()].double()
    lap("matching")
    stage(f"RANSAC ({config.model}) on {len(matches)} matches")
    ransac = config.ransac
    if dense is not None:
        ransac = replace(
            ransac,
            iterations=dense.ransac_iterations,
            independence_mm=dense.independence_mm,
            min_inlier_fraction=dense.min_inlier_fraction,
        )
    found = estimate(f_pts, m_pts, config.model, ransac, seed=config.seed)
    overlap = _check_overlap(f_side.work, m_side.work, found.transform)
    region_mm = f_side.work.grid.index_to_world(np.argwhere(overlap)[:, ::-1].astype(float))
    confidence = found.confidence * determination(f_pts[found.inliers.cpu()], region_mm)
    if confidence < config.min_confidence:
        raise RegistrationFailed(
            f"{found.n_inliers} of {len(matches)} matches agree on a transform, but they could be chance "
            f"or leave it loose (confidence {confidence:.2f} < {config.min_confidence:g}): no transform "
            "written; check that the images overlap, or lower --min-confidence to see the guess"
        )
    lap("ransac")
    transform = found.transform
    if config.refine is not None:
        stage("intensity refinement")
        refined = refine(fixed, moving, transform, config.model, config.refine, config.device).transform
        transform = _kept_refinement(found.transform, refined, f_pts[found.inliers.cpu()].numpy(), config)
        lap("refine")
    log.info("registered with %d inliers of %d matches", found.n_inliers, len(matches))
    return Result(
        transform=transform,
        ransac_transform=found.transform,
        fixed_points_mm=f_pts.numpy(),
        moving_points_mm=m_pts.numpy(),
        inliers=found.inliers.cpu().numpy(),
        confidence=confidence,
        rmse_mm=found.rmse_mm,
        timings_s=timings,
        fixed=fixed,
        moving=moving,
    )


def _fov_region(work: Image) -> np.ndarray:
    """Bool array: a working image's field of view (voxels with data and signal), computed once for
    the dense/sparse choice, the grids and the keypoint detector."""
    return work.valid_mask() & fov_mask(work)


def _match(
    f_side: _Side, m_side: _Side, config: RegisterConfig, candidates: str | None, shortlist: int
) -> Matches:
    """Matches fixed -> moving: mutual nearest neighbours under ``config.matching`` (sparse,
    ``candidates`` None), or each query takes its nearest candidate, the candidates being ``fixed`` or
    ``moving`` (``shortlist`` > 0: nearest in descriptors and MIND-SSC among that many, DenseConfig)."""
    if candidates is None:
        return match(f_side.descriptors, m_side.descriptors, config.matching)
    dense_fixed = candidates == "fixed"
    query, dense = (m_side, f_side) if dense_fixed else (f_side, m_side)
    if shortlist > 0:

        def candidate_mind(index: torch.Tensor) -> torch.Tensor:
            points = dense.keypoints.points_mm[index.reshape(-1).cpu()]
            mind = describe_mind(dense.work, points, config.mind, dense=dense.mind_maps)
            return mind.reshape(*index.shape, -1)

        query_mind = describe_mind(query.work, query.keypoints.points_mm, config.mind, dense=query.mind_maps)
        found = match_shortlisted(query.descriptors, dense.descriptors, query_mind, candidate_mind, shortlist)
    else:
        found = match(query.descriptors, dense.descriptors, MatchConfig(max_ratio=1.0, mutual=False))
    if not dense_fixed:
        return found
    order = torch.argsort(found.i1)
    return Matches(found.i1[order], found.i0[order], found.distance[order], found.ratio[order])


def _kept_refinement(
    ransac: AffineTransform, refined: AffineTransform, inliers_mm: np.ndarray, config: RegisterConfig
) -> AffineTransform:
    """``refined``, unless it moves an inlier keypoint ``(K, d)`` further than the RANSAC inlier
    threshold from where the matches put it: refinement polishes, and a jump that far means the
    intensity metric found another optimum (seen on CT, where soft tissue is flat), not a better one."""
    shift = np.linalg.norm(refined.apply(inliers_mm) - ransac.apply(inliers_mm), axis=1)
    if shift.size and shift.max() > config.ransac.threshold_mm:
        log.warning(
            "refinement moved inlier keypoints by up to %.1f mm (> %.1f mm): kept the RANSAC transform",
            shift.max(),
            config.ransac.threshold_mm,
        )
        return ransac
    return refined


def _check_overlap(fixed_work: Image, moving_work: Image, transform: AffineTransform) -> np.ndarray:
    """Mask of the fixed working grid's voxels in both fields of view; raises if (almost) none."""
    landed = resample(moving_work, fixed_work.grid, transform).mask & fixed_work.valid_mask()
    # A share of the smaller FOV: a small cone inside a whole-brain MRI overlaps fully. Both working
    # grids share a spacing, so voxel counts compare.
    smaller = min(fixed_work.valid_mask().sum(), moving_work.valid_mask().sum())
    fraction = landed.sum() / max(smaller, 1)
    if fraction < 0.01:
        raise NoOverlapError(
            f"the matched transform overlaps only {100 * fraction:.1f}% of the smaller field of view: "
            "the images do not overlap"
        )
    return landed
