"""register(fixed, moving) -> Result: the whole pipeline, one function.

working grids -> keypoints -> descriptors (MIND-SSC or CrossKEY) -> mutual-NN matching -> RANSAC
-> refinement.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from crossreg.errors import CrossregError, DimensionMismatchError, NoOverlapError
from crossreg.estimate import RansacConfig, estimate
from crossreg.features.crosskey import DescriptorNet, describe_crosskey, load_model
from crossreg.features.mind import MindConfig, dense_mind, describe_mind
from crossreg.image import Image
from crossreg.keypoints import KeypointConfig, Keypoints, detect_keypoints
from crossreg.matching import MatchConfig, match
from crossreg.refine import RefineConfig, refine
from crossreg.resample import resample, working_image
from crossreg.result import Result
from crossreg.transform import AffineTransform, Model

log = logging.getLogger(__name__)

#: Working grids aim for this many voxels along the longest axis (3D, 2D): enough anatomy per
#: descriptor neighbourhood, few enough voxels for a CPU.
WORKING_SIZE = {3: 96, 2: 192}


@dataclass(frozen=True)
class RegisterConfig:
    """Everything that determines a registration (with the seed).

    features: ``mind`` (MIND-SSC, hand-crafted, any modality pair) or ``crosskey`` (learned descriptors
    for MRI/ultrasound, from ``weights``: a file of ``crossreg train``, or the shipped general model).
    """

    model: Model = "rigid"
    features: Literal["mind", "crosskey"] = "mind"
    weights: str | None = None
    working_spacing_mm: float | None = None
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    mind: MindConfig = field(default_factory=MindConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    ransac: RansacConfig = field(default_factory=RansacConfig)
    refine: RefineConfig | None = field(default_factory=RefineConfig)
    device: str = "cpu"
    seed: int = 0


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


def _prepare(
    image: Image, spacing_mm: float, config: RegisterConfig, seed: int, net: DescriptorNet | None
) -> _Side:
    work = working_image(image, spacing_mm)
    kps = detect_keypoints(work, config.keypoints, seed=seed)
    if net is not None:
        return _Side(work, kps, describe_crosskey(net, work, kps.points_mm))
    dense = dense_mind(work, config.mind).to(config.device)
    desc = describe_mind(work, kps.points_mm.to(config.device), config.mind, dense=dense)
    return _Side(work, kps, desc)


def _network(config: RegisterConfig, ndim: int) -> DescriptorNet | None:
    """The descriptor network ``config`` asks for (None for MIND), checked against the images."""
    if config.features == "mind":
        return None
    if config.features != "crosskey":
        raise CrossregError(f"features={config.features!r}: use 'mind' or 'crosskey'")
    net, _ = load_model(config.weights, config.device)
    if net.config.ndim != ndim:
        raise CrossregError(f"the descriptor model is {net.config.ndim}D but the images are {ndim}D")
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
    stage(f"keypoints and {config.features} descriptors on {spacing:.2g} mm grids")
    f_side = _prepare(fixed, spacing, config, config.seed, net)
    m_side = _prepare(moving, spacing, config, config.seed + 1, net)
    lap("features")
    stage(f"matching {len(f_side.keypoints)} x {len(m_side.keypoints)} keypoints")
    matches = match(f_side.descriptors, m_side.descriptors, config.matching)
    f_pts = f_side.keypoints.points_mm[matches.i0.cpu()].double()
    m_pts = m_side.keypoints.points_mm[matches.i1.cpu()].double()
    lap("matching")
    stage(f"RANSAC ({config.model}) on {len(matches)} matches")
    found = estimate(f_pts, m_pts, config.model, config.ransac, seed=config.seed)
    _check_overlap(f_side.work, m_side.work, found.transform)
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
        confidence=found.confidence,
        rmse_mm=found.rmse_mm,
        timings_s=timings,
        fixed=fixed,
        moving=moving,
    )


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


def _check_overlap(fixed_work: Image, moving_work: Image, transform: AffineTransform) -> float:
    """Fraction of the fixed field of view that lands inside the moving one; raises if (almost) none."""
    landed = resample(moving_work, fixed_work.grid, transform).mask & fixed_work.valid_mask()
    fraction = landed.sum() / max(fixed_work.valid_mask().sum(), 1)
    if fraction < 0.01:
        raise NoOverlapError(
            f"the matched transform leaves only {100 * fraction:.1f}% of the fixed field of view inside the "
            "moving image: the images do not overlap"
        )
    return float(fraction)
