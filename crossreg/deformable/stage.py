"""deform: the deformable stage after a linear registration, ConvexAdam style (Siebert, Hansen,
Heinrich, "Fast 3D registration with accurate optimisation and little learning for Learn2Reg 2021").

features (MIND-SSC of both images on the fixed working grid, the moving one through the linear
result) -> coupled convex search on coarse nodes (:mod:`convex`) -> Adam on the dense field
(:mod:`instance`; optionally with the linear stage's matches as a soft point term, :mod:`points`) ->
folding guard (:mod:`jacobian`). The result maps fixed to moving points as ``linear.apply(x + u(x))``
(:class:`crossreg.deformation.DeformableTransform`), ``u`` on the fixed image's working grid. Every
step is batched torch: the same code runs on a GPU.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from crossreg.deformable.config import DeformableConfig
from crossreg.deformable.convex import candidates, cost_volume, coupled_convex, to_voxels
from crossreg.deformable.features import agreement, halved, pair_features
from crossreg.deformable.instance import instance_optimise
from crossreg.deformable.jacobian import jacobian_determinant, unfold
from crossreg.deformable.points import point_targets
from crossreg.deformation import DeformableTransform
from crossreg.image import Image
from crossreg.transform import AffineTransform

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class DeformableResult:
    """The deformable transform and the facts a user checks it by."""

    transform: DeformableTransform  # fixed -> moving: linear after the field
    negative_jacobian_fov: float  # share (0-1) of fixed field-of-view voxels where the field folds
    negative_jacobian: float  # the same share over the whole working grid
    max_displacement_mm: float  # largest |u| inside the fixed field of view
    smoothings: int  # times the folding guard had to smooth the field (0: it never folded)
    seconds: float
    n_points: int = 0  # matches that pulled the field (crossreg.deformable.points)
    # The images' feature agreement at the linear result (features.agreement); below the config's
    # min_agreement the features were left out.
    feature_agreement: float = float("nan")


def deform(
    fixed: Image,
    moving: Image,
    linear: AffineTransform,
    config: DeformableConfig | None = None,
    device: str = "cpu",
    matches: tuple[np.ndarray, np.ndarray] | None = None,
) -> DeformableResult:
    """The deformable transform of ``moving`` onto ``fixed`` after ``linear`` (fixed -> moving).

    matches: ``(fixed_mm, moving_mm)`` ``(M, d)`` world mm, e.g. the linear stage's matches
    (:attr:`crossreg.result.Result.fixed_points_mm`, all of them, not only its inliers): those that
    agree with their neighbours pull the field (``config.point_weight``; :mod:`points`).
    """
    config = config or DeformableConfig()
    start = time.perf_counter()
    pair = pair_features(
        fixed,
        moving,
        linear,
        config.feature_spacing_mm,
        config.structure_floor,
        config.equalise,
        device,
    )
    agree = agreement(pair)
    if agree < config.min_agreement:
        log.info(
            "deformable: features agree %.2f < %.2f: left out, matches only", agree, config.min_agreement
        )
        pair = replace(pair, fixed_weight=torch.zeros_like(pair.fixed_weight))
    points = None
    if matches is not None and config.point_weight > 0:
        points = point_targets(*matches, linear, pair.grid, config.point_capture_mm)
        log.info("deformable: %d of %d matches pull the field", len(points), len(matches[0]))
    spacing = pair.grid.spacing_mm[0]
    k = max(1, round(config.grid_spacing_mm / spacing))
    step = max(1, round(config.step_mm / spacing))
    radius = int(config.capture_mm // (step * spacing))
    offsets = candidates(radius, step, fixed.ndim, pair.fixed.device)
    with torch.no_grad():
        weight = pair.fixed_weight * pair.moving_weight
        cost = cost_volume(
            pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, weight, k, radius, step
        )
        nodes = coupled_convex(cost, offsets, float(step))
        del cost
        coarse = to_voxels(nodes, k, pair.grid.shape)
        half = halved(pair)
        start_half = _pool2(coarse) / 2.0  # voxels of the halved grid
    u_half = instance_optimise(
        half,
        start_half,
        config.weight,
        config.outside_weight,
        config.iterations,
        config.learning_rate / spacing / 2,
        None if points is None else points.halved(),
        config.point_weight,
    )
    u = to_voxels(2.0 * u_half, 2, pair.grid.shape)
    with torch.no_grad():
        u, smoothings = unfold(u, pair.fixed_mask)
        folded = jacobian_determinant(u) <= 0
        length = u.pow(2).sum(0).sqrt()[pair.fixed_mask] * spacing
    transform = DeformableTransform.from_displacement(linear, u * spacing, pair.grid)
    result = DeformableResult(
        transform,
        negative_jacobian_fov=float(folded[pair.fixed_mask].float().mean()),
        negative_jacobian=float(folded.float().mean()),
        max_displacement_mm=float(length.max()) if length.numel() else 0.0,
        smoothings=smoothings,
        seconds=time.perf_counter() - start,
        n_points=0 if points is None else len(points),
        feature_agreement=agree,
    )
    log.info(
        "deformable: max %.1f mm, %.3f%% folded in the fixed FOV, %.1f s",
        result.max_displacement_mm,
        100 * result.negative_jacobian_fov,
        result.seconds,
    )
    return result


def _pool2(field: torch.Tensor) -> torch.Tensor:
    """``field`` ``(d, *shape)`` averaged over 2^d voxels, as :func:`halved` pools the features."""
    pad = [p for n in reversed(field.shape[1:]) for p in (0, n % 2)]
    pool = torch.nn.functional.avg_pool3d if field.dim() == 4 else torch.nn.functional.avg_pool2d
    return pool(torch.nn.functional.pad(field[None], pad, mode="replicate"), 2)[0]
