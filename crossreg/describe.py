"""describe: where to look on each image of a pair, and what each of those points looks like.

Sparse plans detect keypoints on both working images; dense plans lay grids instead: candidates every
``DenseConfig.spacing_mm`` over the reference, queries every ``query_spacing_mm`` over the query
image (coarser where there would be more than ``max_queries``). Either way both images then go
through the same features, which describe each image once and read descriptors at its points.
matcher2d plans describe each image with no points yet: the matcher finds them, and reads the
descriptors there (:func:`crossreg.correspond.detector_free`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossreg.config import RegisterConfig
from crossreg.features import Description, Features
from crossreg.image_cache import ImageCache
from crossreg.keypoints import detect_keypoints, grid_points
from crossreg.plan import Plan, Side


@dataclass(frozen=True, eq=False)
class Described:
    """One image of a pair, described at its points.

    side: the image and its role. points_mm: ``(N, d)`` float32 CPU, world mm LPS. descriptors:
    ``(N, C)`` float32 on the features' device. description: to read descriptors at other points.
    """

    side: Side
    points_mm: torch.Tensor
    descriptors: torch.Tensor
    description: Description

    def __len__(self) -> int:
        return int(self.points_mm.shape[0])


def describe(
    plan: Plan, features: Features, config: RegisterConfig, cache: ImageCache | None = None
) -> tuple[Described, Described]:
    """The query and the reference image of ``plan``, described at their points; ``cache``: where an
    image described before the same way (its working image one the cache made) is found again."""

    def described(side: Side) -> Described:
        def make() -> Described:
            return _described(side, features, points_of(side, plan, config))

        if cache is None:
            return make()
        # What else the points and descriptors depend on: the seed draws sparse keypoints only.
        seed = side.seed if plan.mode == "sparse" else None
        key = (id(features), side.role, seed, plan.mode, side is plan.reference, config.sparse, config.dense)
        return cache.described(side.image, key, make)

    return described(plan.query), described(plan.reference)


def points_of(side: Side, plan: Plan, config: RegisterConfig) -> torch.Tensor:
    """World points ``(N, d)`` float32 where ``side`` is described: its keypoints (sparse plans), its
    grid of queries or of candidates (dense plans), inside its field of view; none (matcher2d plans)."""
    image = side.image
    if plan.mode == "matcher2d":
        return torch.zeros(0, image.ndim)
    if plan.mode == "sparse":
        return detect_keypoints(image, config.sparse.keypoints, side.seed, image.valid_mask()).points_mm
    dense = config.dense
    if side is plan.reference:
        points = grid_points(image, image.valid_mask(), dense.border_mm, dense.spacing_mm)
    else:
        points = grid_points(
            image, image.valid_mask(), dense.border_mm, dense.query_spacing_mm, dense.max_queries
        )
    return torch.from_numpy(points).float()


def _described(side: Side, features: Features, points_mm: torch.Tensor) -> Described:
    description = features.describe(side.image)
    return Described(side, points_mm, description.at(points_mm), description)
