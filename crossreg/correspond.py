"""correspond: matches between the two described images of a pair. :data:`MATCHERS` holds every way.

A matcher takes the described query and reference images and returns their
:class:`Correspondences`. Sparse and dense matching pair up the described points by their
descriptors (:class:`crossreg.matching.Matches`: query index, reference index, nearest /
second-nearest distance ratio). A detector-free matcher (``matcher2d``) never describes one image
alone: it reads the two working images, ``query.side.image`` and ``reference.side.image``, finds the
corresponding points itself, and describes each image at its points with the image's description
(what the round trip of :mod:`crossreg.verify` reads); its network comes loaded, from the caller
(:class:`crossreg.register.Registrator` loads it once). A new way of matching is one function and one
entry here; ``RegisterConfig.matching``, the CLI's ``--matching`` and batch's ``matching`` column
read this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from crossreg.matcher2d.match import Matcher2dConfig
from crossreg.matcher2d.net import MatcherNet
from crossreg.matcher2d.world import match_working
from crossreg.matching import MatchConfig, Matches, match, match_shortlisted

if TYPE_CHECKING:
    from crossreg.config import RegisterConfig
    from crossreg.describe import Described
    from crossreg.plan import Plan


@dataclass(frozen=True, eq=False)
class Correspondences:
    """Matched points of a pair, with the described images they came from.

    query_mm, reference_mm: ``(M, d)`` float64 CPU, world mm LPS, ordered by the fixed image's point
    index whichever image held the queries (so RANSAC draws from the same order). confidence: ``(M,)``
    float32 in [0, 1]: for descriptor matches one minus the nearest / second-nearest distance ratio
    (near 0 where another point looked almost as alike), for matcher2d its dual-softmax confidence.
    query, reference: the two described images.
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


#: (query, reference, config, net) -> correspondences; ``net`` is the matcher network of detector-free
#: matchers, loaded by the caller, and None for descriptor matchers (their model is the features).
Matcher = Callable[["Described", "Described", "RegisterConfig", "MatcherNet | None"], Correspondences]


def mutual_nearest(
    query: Described, reference: Described, config: RegisterConfig, net: MatcherNet | None = None
) -> Correspondences:
    """Sparse matching: mutual nearest neighbours that pass the ratio test (``SparseConfig.matching``)."""
    return from_matches(
        query, reference, match(query.descriptors, reference.descriptors, config.sparse.matching)
    )


def nearest_candidate(
    query: Described, reference: Described, config: RegisterConfig, net: MatcherNet | None = None
) -> Correspondences:
    """Dense matching: every query takes its nearest candidate; with a re-ranking descriptor, the one
    nearest in both descriptors among its ``DenseConfig.shortlist`` nearest in the first."""
    rerank, k = reference.description.rerank_at, config.dense.shortlist
    if rerank is None or query.description.rerank_at is None or k == 0:
        found = match(query.descriptors, reference.descriptors, MatchConfig(max_ratio=1.0, mutual=False))
        return from_matches(query, reference, found)

    def candidates(index: torch.Tensor) -> torch.Tensor:
        # Neighbouring queries share most of their shortlists: each candidate is described once.
        unique, inverse = torch.unique(index, return_inverse=True)
        described = rerank(reference.points_mm[unique.cpu()])
        return described.index_select(0, inverse.reshape(-1)).reshape(*index.shape, -1)

    second = query.description.rerank_at(query.points_mm)
    found = match_shortlisted(query.descriptors, reference.descriptors, second, candidates, k)
    return from_matches(query, reference, found)


def detector_free(
    query: Described, reference: Described, config: RegisterConfig, net: MatcherNet | None = None
) -> Correspondences:
    """2D detector-free matching: the matcher network ``net`` (of ``Matcher2dSettings.weights``, loaded
    by :func:`crossreg.matcher2d.match.load_matcher`) on the two working images; each side described
    at its matched points, in the order of the query's (fixed) cells."""
    if net is None:
        raise ValueError("detector-free matching needs the matcher network: load it with load_matcher")
    settings = config.matcher2d
    found = match_working(
        net, query.side.image, reference.side.image, Matcher2dConfig(threshold=settings.threshold)
    )
    sides = [
        at_points(side, torch.from_numpy(points).float())
        for side, points in ((query, found.points0_mm), (reference, found.points1_mm))
    ]
    return Correspondences(
        sides[0].points_mm.double(),
        sides[1].points_mm.double(),
        torch.from_numpy(found.confidence).float(),
        *sides,
    )


def at_points(described: Described, points_mm: torch.Tensor) -> Described:
    """``described``'s image described at other points ``(N, d)`` float32 world mm."""
    return replace(described, points_mm=points_mm, descriptors=described.description.at(points_mm))


MATCHERS: dict[str, Matcher] = {
    "sparse": mutual_nearest,  # keypoints on both images
    "dense": nearest_candidate,  # grids: queries over the smaller field of view, candidates over the larger
    "matcher2d": detector_free,  # 2D only: the matcher network finds the points on both images
}


def from_matches(query: Described, reference: Described, found: Matches) -> Correspondences:
    """The correspondences of descriptor matches between the described points, in fixed-index order."""
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


def correspond(
    query: Described, reference: Described, plan: Plan, config: RegisterConfig, net: MatcherNet | None = None
) -> Correspondences:
    """The correspondences of ``plan``'s matcher between the described query and reference images;
    ``net``: the loaded matcher network, which matcher2d plans need."""
    return MATCHERS[plan.mode](query, reference, config, net)
