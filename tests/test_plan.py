"""plan_pair: working grids, fields of view computed once, the mode, and which image holds the queries."""

import numpy as np
import pytest

from crossreg import datasets
from crossreg.config import Matcher2dSettings, RegisterConfig
from crossreg.errors import DimensionMismatchError, InvalidConfigError
from crossreg.features import make_features
from crossreg.features.crosskey import CrossKeyFeatures
from crossreg.features.mind import MindFeatures
from crossreg.image import from_array
from crossreg.matcher2d.match import matcher_available
from crossreg.matcher2d.world import MATCHER_UPSAMPLE, WORKING_PIXELS
from crossreg.plan import DENSE_FOV_RATIO, choose_mode, plan_pair, uses_matcher2d, working_spacing
from crossreg.synth.cases import make_case


@pytest.fixture(scope="module")
def slice_pair():
    """An axial slice and a small ultrasound sector of it (a few percent of its field of view)."""
    sl = datasets.mni152_slice(1, "axial")
    return make_case(sl, "us", 15.0, 15.0, seed=2)


def test_auto_is_dense_for_features_trained_on_grids_and_for_small_fields_of_view():
    mind = MindFeatures()
    assert choose_mode("auto", mind, DENSE_FOV_RATIO + 0.05) == "sparse"
    assert choose_mode("auto", mind, DENSE_FOV_RATIO - 0.05) == "dense"  # an ultrasound cone in an MRI
    assert CrossKeyFeatures.dense_by_default
    crosskey = make_features(RegisterConfig(features="crosskey"), 3)
    assert choose_mode("auto", crosskey, 1.0) == "dense"
    assert choose_mode("sparse", crosskey, 0.01) == "sparse" and choose_mode("dense", mind, 1.0) == "dense"


def test_dense_plan_puts_the_queries_on_the_smaller_field_of_view_either_way(slice_pair):
    case, config = slice_pair, RegisterConfig(matching="descriptors")
    features = make_features(config, 2)
    plan = plan_pair(case.fixed, case.moving, config, features)
    assert plan.mode == "dense" and plan.fov_ratio < DENSE_FOV_RATIO
    assert (plan.query.role, plan.reference.role) == ("moving", "fixed")
    assert plan.query.fov_voxels < plan.reference.fov_voxels
    swapped = plan_pair(case.moving, case.fixed, config, features)
    assert (swapped.query.role, swapped.reference.role) == ("fixed", "moving")
    assert swapped.query.fov_voxels == plan.query.fov_voxels
    assert plan.ransac == config.dense.ransac and plan.side("fixed") is plan.reference


def test_sparse_plan_asks_the_fixed_image_and_uses_its_own_ransac(slice_pair):
    config = RegisterConfig(matching="sparse")
    plan = plan_pair(slice_pair.fixed, slice_pair.moving, config, make_features(config, 2))
    assert plan.mode == "sparse" and plan.query.role == "fixed"
    assert plan.ransac == config.sparse.ransac != config.dense.ransac
    assert (plan.query.seed, plan.reference.seed) == (config.seed, config.seed + 1)


def test_working_images_carry_their_field_of_view_on_one_isotropic_grid(slice_pair):
    case, config = slice_pair, RegisterConfig(matching="descriptors")
    plan = plan_pair(case.fixed, case.moving, config, make_features(config, 2))
    spacing = working_spacing(case.fixed, case.moving)
    assert plan.spacing_mm == spacing
    for side in (plan.query, plan.reference):
        work = side.image
        assert work.spacing_mm == (spacing, spacing) and np.array_equal(work.direction, np.eye(2))
    # The mask is the field of view: the sector, not the zero padding of its bounding box.
    sector = plan.side("moving").image
    inside = sector.valid_mask()
    assert 0.2 < inside.mean() < 0.9
    assert np.abs(sector.array[~inside]).mean() < 0.1 * np.abs(sector.array[inside]).mean()


def test_images_of_different_dimensionality_are_refused(slice_pair):
    config = RegisterConfig()
    with pytest.raises(DimensionMismatchError, match="2D but moving image is 3D"):
        plan_pair(slice_pair.fixed, datasets.mni152_t1(2), config, make_features(config, 2))


def test_matcher2d_plans_ask_the_fixed_image_on_the_matchers_grids(slice_pair, tmp_path):
    # auto stays as it was without a matcher model; a given one makes 2D pairs go to the matcher
    settings = Matcher2dSettings(weights=str(tmp_path / "m.pt"))
    for config in (RegisterConfig(matching="matcher2d"), RegisterConfig(matcher2d=settings)):
        plan = plan_pair(slice_pair.fixed, slice_pair.moving, config, make_features(config, 2))
        assert (
            plan.mode == "matcher2d" and plan.query.role == "fixed" and plan.ransac == config.matcher2d.ransac
        )
        pair = (slice_pair.fixed, slice_pair.moving)
        expected = working_spacing(*pair, None, WORKING_PIXELS, MATCHER_UPSAMPLE)
        # a 2 mm slice is upsampled for the network's 8-pixel cells
        assert plan.spacing_mm == expected < min(slice_pair.fixed.spacing_mm) / 2
    # the shipped model makes auto use it for 2D; descriptors never does
    assert matcher_available(None)
    auto, descriptors = RegisterConfig(), RegisterConfig(matching="descriptors")
    assert plan_pair(slice_pair.fixed, slice_pair.moving, auto, make_features(auto, 2)).mode == "matcher2d"
    plan = plan_pair(slice_pair.fixed, slice_pair.moving, descriptors, make_features(descriptors, 2))
    assert plan.mode == "dense" and plan.spacing_mm == working_spacing(slice_pair.fixed, slice_pair.moving)


def test_matcher2d_on_3d_images_is_one_clear_error():
    volume = from_array(np.random.default_rng(0).random((8, 8, 8), np.float32), (1.0, 1.0, 1.0))
    config = RegisterConfig(matching="matcher2d")
    assert not uses_matcher2d(RegisterConfig(matcher2d=Matcher2dSettings(weights="m.pt")), 3)
    with pytest.raises(InvalidConfigError, match="matches 2D images only, and these are 3D"):
        plan_pair(volume, volume, config, make_features(config, 3))
