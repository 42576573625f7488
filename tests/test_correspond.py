"""correspond: matches turned back into fixed and moving points, whichever image held the queries."""

import numpy as np
import pytest
import torch

from crossreg import datasets
from crossreg.config import Matcher2dSettings, RegisterConfig
from crossreg.correspond import MATCHERS, correspond
from crossreg.describe import describe
from crossreg.features import make_features
from crossreg.features.weights import save_weights
from crossreg.filters import dilate
from crossreg.matcher2d.match import KIND, load_matcher
from crossreg.matcher2d.net import MatcherNet
from crossreg.matching import MatchConfig, match
from crossreg.plan import plan_pair
from crossreg.synth.cases import make_case


def run(case, config):
    features = make_features(config, case.fixed.ndim)
    plan = plan_pair(case.fixed, case.moving, config, features)
    query, reference = describe(plan, features, config)
    net = load_matcher(config.matcher2d.weights)[0] if plan.mode == "matcher2d" else None
    return plan, query, reference, correspond(query, reference, plan, config, net)


@pytest.fixture(scope="module")
def sector_case():
    """A T2-like slab of a fifth of an axial slice, 15 deg / 15 mm away: matched densely
    (`descriptors`), the moving image holding the queries."""
    return make_case(datasets.mni152_slice(1, "axial"), "t2", 15.0, 15.0, fov_fraction=0.2, seed=1)


def precision(case, fixed_mm: torch.Tensor, moving_mm: torch.Tensor, within_mm: float = 3.0) -> float:
    moved = case.true_transform.apply(fixed_mm.numpy())
    return float((np.linalg.norm(moved - moving_mm.numpy(), axis=1) < within_mm).mean())


def test_dense_matches_of_moving_queries_come_back_as_fixed_to_moving(sector_case):
    plan, query, reference, pairs = run(sector_case, RegisterConfig(matching="descriptors"))
    assert plan.mode == "dense" and query.side.role == "moving"
    assert len(pairs) == len(query)  # every query is matched
    assert pairs.moving_mm is pairs.query_mm and pairs.fixed_mm is pairs.reference_mm
    # Ordered by the fixed (reference) point each match uses.
    index = torch.cdist(pairs.fixed_mm.float(), reference.points_mm).argmin(dim=1)
    assert bool((index[1:] >= index[:-1]).all())
    # The truth maps many fixed points onto their moving partners; swapped sides would put none there.
    assert precision(sector_case, pairs.fixed_mm, pairs.moving_mm) > 0.25  # measured 0.35
    assert precision(sector_case, pairs.moving_mm, pairs.fixed_mm) < 0.05


def test_confidence_is_one_minus_the_distance_ratio(sector_case):
    config = RegisterConfig(matching="sparse")
    plan, query, reference, pairs = run(sector_case, config)
    assert plan.mode == "sparse" and pairs.fixed_mm is pairs.query_mm
    found = match(query.descriptors, reference.descriptors, config.sparse.matching)
    np.testing.assert_allclose(pairs.confidence.numpy(), (1 - found.ratio).numpy(), atol=1e-6)
    assert float(pairs.confidence.min()) >= 1 - MatchConfig().max_ratio - 1e-6
    assert float(pairs.confidence.max()) <= 1.0


def test_every_descriptor_matcher_pairs_described_points(sector_case):
    config = RegisterConfig(matching="descriptors")
    _, query, reference, _ = run(sector_case, config)
    for name in ("sparse", "dense"):
        found = MATCHERS[name](query, reference, config)
        assert len(found) > 0, name
        assert found.query is query and found.reference is reference, name
        assert bool((found.query_mm[:, None] == query.points_mm.double()).all(-1).any(1).all()), name


@pytest.fixture(scope="module")
def random_matcher(tmp_path_factory):
    """A matcher model of random weights: for plumbing only, it matches nothing in particular."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("matcher") / "m.pt"
    save_weights(path, MatcherNet(), KIND, {"steps": 0})
    return str(path)


def test_matcher2d_describes_both_images_at_its_points_inside_their_fields_of_view(
    sector_case, random_matcher
):
    config = RegisterConfig(matching="matcher2d", matcher2d=Matcher2dSettings(random_matcher, threshold=0.0))
    plan, query, reference, pairs = run(sector_case, config)
    assert plan.mode == "matcher2d" and query.side.role == "fixed" and len(query) == len(reference) == 0
    assert len(pairs) > 0 and pairs.fixed_mm is pairs.query_mm
    assert pairs.query.side is query.side and pairs.reference.side is reference.side
    for described in (pairs.query, pairs.reference):
        assert described.points_mm.shape == (len(pairs), 2)
        assert described.descriptors.shape[0] == len(pairs)
        torch.testing.assert_close(described.descriptors, described.description.at(described.points_mm))
        # coarse cells at least half inside, refined by up to two fine steps: within 8 px of the field of view
        near = dilate(torch.from_numpy(described.side.image.valid_mask()), 8).numpy()
        index = np.round(described.side.image.grid.world_to_index(described.points_mm.double().numpy()))
        assert bool(near[index[:, 1].astype(int), index[:, 0].astype(int)].all())
    assert float(pairs.confidence.min()) >= 0 and float(pairs.confidence.max()) <= 1
