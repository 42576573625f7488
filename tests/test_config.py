"""RegisterConfig: one owner per setting, vocabularies read from the registries, clear refusals."""

import pytest

from crossreg.config import MATCHING, DenseConfig, RegisterConfig
from crossreg.correspond import MATCHERS
from crossreg.errors import CrossregError, InvalidConfigError
from crossreg.features import FEATURES


def test_vocabularies_are_the_registries():
    assert ("auto", "descriptors", *MATCHERS) == MATCHING
    assert set(MATCHERS) == {"sparse", "dense", "matcher2d"}
    assert set(FEATURES) == {"mind", "crosskey", "uae"}


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ({"model": "projective"}, "model 'projective' is unknown; choose from rigid, similarity, affine"),
        ({"features": "sift"}, "features 'sift' is unknown; choose from mind, crosskey, uae"),
        (
            {"matching": "global"},
            "matching 'global' is unknown; choose from auto, descriptors, sparse, dense, matcher2d",
        ),
        ({"min_confidence": 1.5}, r"min confidence 1.5: expected a value in \[0, 1\]"),
        ({"min_agreement": -1.5}, r"min agreement -1.5: expected a value in \[-1, 1\]"),
    ],
)
def test_unknown_kinds_and_out_of_range_values_are_refused(setting, words):
    with pytest.raises(InvalidConfigError, match=words) as caught:
        RegisterConfig(**setting)
    assert isinstance(caught.value, CrossregError) and isinstance(caught.value, ValueError)


def test_each_way_of_matching_owns_its_ransac():
    config = RegisterConfig()
    assert config.settings("dense") is config.dense and config.settings("sparse") is config.sparse
    assert config.settings("matcher2d") is config.matcher2d
    dense, sparse = config.dense.ransac, config.sparse.ransac
    assert (dense.iterations, dense.independence_mm, dense.min_inlier_fraction) == (20000, 8.0, 0.05)
    assert (sparse.iterations, sparse.independence_mm, sparse.min_inlier_fraction) == (4000, 0.0, 0.0)
    with pytest.raises(InvalidConfigError, match="shortlist"):
        DenseConfig(shortlist=-1)
