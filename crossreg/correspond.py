"""correspond: matches between the two described images of a pair. :data:`MATCHERS` holds every way.

A matcher takes the described query and reference images and returns :class:`crossreg.matching.Matches`
(query index, reference index, and the nearest / second-nearest distance ratio of each). A new way of
matching is one function and one entry here; ``RegisterConfig.matching``, the CLI's ``--matching`` and
batch's ``matching`` column read this registry. A matcher that never describes one image alone (a
detector-free matcher) reads the two working images, ``query.side.image`` and
``reference.side.image``, instead of their descriptors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from crossreg.matching import MatchConfig, Matches, match, match_shortlisted

if TYPE_CHECKING:
    from crossreg.config import RegisterConfig
    from crossreg.describe import Described
    from crossreg.plan import Plan

Matcher = Callable[["Described", "Described", "RegisterConfig"], Matches]


def mutual_nearest(query: Described, reference: Described, config: RegisterConfig) -> Matches:
    """Sparse matching: mutual nearest neighbours that pass the ratio test (``SparseConfig.matching``)."""
    return match(query.descriptors, reference.descriptors, config.sparse.matching)


def nearest_candidate(query: Described, reference: Described, config: RegisterConfig) -> Matches:
    """Dense matching: every query takes its nearest candidate; with a re-ranking descriptor, the one
    nearest in both descriptors among its ``DenseConfig.shortlist`` nearest in the first."""
    rerank, k = reference.description.rerank_at, config.dense.shortlist
    if rerank is None or query.description.rerank_at is None or k == 0:
        return match(query.descriptors, reference.descriptors, MatchConfig(max_ratio=1.0, mutual=False))

    def candidates(index: torch.Tensor) -> torch.Tensor:
        return rerank(reference.points_mm[index.reshape(-1).cpu()]).reshape(*index.shape, -1)

    second = query.description.rerank_at(query.points_mm)
    return match_shortlisted(query.descriptors, reference.descriptors, second, candidates, k)


MATCHERS: dict[str, Matcher] = {
    "sparse": mutual_nearest,  # keypoints on both images
    "dense": nearest_candidate,  # grids: queries over the smaller field of view, candidates over the larger
}


@dataclass(frozen=True, eq=False)
class Correspondences:
    """Matched points of a pair, with the described images they came from.

    query_mm, reference_mm: ``(M, d)`` float64 CPU, world mm LPS, ordered by the fixed image's point
    index whichever image held the queries (so RANSAC draws from the same order). confidence: ``(M,)``
    float32 in [0, 1], one minus the match's nearest / second-nearest distance ratio: near 0 where
    another point looked almost as alike. query, reference: the two described images.
    """

    query_mm: torch.Tensor
    reference_mm: torch.Tensor
    confidence: torch.Tensor
    query: Described
    reference: Described

    def __len__(self) -> int:
        return int(self.query_mm.shape[0])

    @property
    def fixed_mm(self) -> torch.Tensor:
        """``(M, d)`` the matched fixed-image points."""
        return self.query_mm if self.query.side.role == "fixed" else self.reference_mm

    @property
    def moving_mm(self) -> torch.Tensor:
        """``(M, d)`` the matched moving-image points."""
        return self.reference_mm if self.query.side.role == "fixed" else self.query_mm


def correspond(query: Described, reference: Described, plan: Plan, config: RegisterConfig) -> Correspondences:
    """The matches of ``plan``'s matcher between the described query and reference images."""
    found = MATCHERS[plan.mode](query, reference, config)
    fixed_index = found.i0 if query.side.role == "fixed" else found.i1
    order = torch.argsort(fixed_index.cpu(), stable=True)
    i_query, i_reference = found.i0.cpu()[order], found.i1.cpu()[order]
    return Correspondences(
        query.points_mm[i_query].double(),
        reference.points_mm[i_reference].double(),
        (1.0 - found.ratio.cpu()[order]).clamp(0.0, 1.0).float(),
        query,
        reference,
    )
