"""Accuracy metrics: TRE, its summary, matching precision, success rate and error AUC on known answers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreg.evaluate import error_auc, matching_precision, success_rate, summarize_tre, tre_mm
from crossreg.synth.geometry import random_rigid
from crossreg.transform import AffineTransform, compose, rigid_from_params

POINTS = np.random.default_rng(0).uniform(-80, 80, (50, 3))


def shift(v_mm) -> AffineTransform:
    v = np.asarray(v_mm, float)
    return AffineTransform(np.eye(v.size), v, "rigid")


@pytest.mark.parametrize("ndim", [2, 3])
def test_tre_of_identity_against_5mm_translation_is_5mm_everywhere(ndim):
    v = np.zeros(ndim)
    v[-1] = 5.0
    tre = tre_mm(AffineTransform.identity(ndim), shift(v), POINTS[:, :ndim])
    np.testing.assert_allclose(tre, 5.0)


def test_tre_of_a_rotation_grows_with_distance_from_the_axis():
    rotation = rigid_from_params([0.0, 0.0, 10.0], np.zeros(3), np.zeros(3))  # about world z
    tre = tre_mm(rotation, AffineTransform.identity(3), POINTS)
    radius = np.linalg.norm(POINTS[:, :2], axis=1)
    np.testing.assert_allclose(tre, 2 * radius * np.sin(np.radians(5.0)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), error=st.floats(0.0, 20.0))
def test_tre_is_the_error_added_after_any_true_rigid_transform(seed, error):
    true = random_rigid(3, 30, 20, np.zeros(3), seed)
    v = error * np.random.default_rng(seed).normal(size=3) / np.sqrt(3)
    tre = tre_mm(compose(true, shift(v)), true, POINTS)
    np.testing.assert_allclose(tre, np.linalg.norm(v), atol=1e-9)


def test_summarize_tre():
    s = summarize_tre(np.arange(1.0, 11.0))
    assert (s.mean_mm, s.median_mm, s.max_mm) == (5.5, 5.5, 10.0)
    assert s.p90_mm == pytest.approx(9.1)
    with pytest.raises(ValueError):
        summarize_tre(np.array([]))


def test_matching_precision_counts_matches_within_threshold():
    true = random_rigid(3, 15, 15, np.zeros(3), seed=1)
    fixed = POINTS[:10]
    offsets = np.zeros((10, 3))
    offsets[:, 0] = [0.0, 0.5, 0.99, 2.0, 2.9, 2.99, 3.01, 10.0, 40.0, 100.0]
    moving = true.apply(fixed) + offsets
    assert matching_precision(fixed, moving, true) == pytest.approx(0.6)
    assert matching_precision(fixed, moving, true, threshold_mm=1.0) == pytest.approx(0.3)
    # The same matches judged against the wrong direction of the truth are (almost) all wrong.
    assert matching_precision(fixed, moving, true.inverse()) == 0.0
    assert matching_precision(fixed[:0], moving[:0], true) == 0.0
    with pytest.raises(ValueError):
        matching_precision(fixed, moving[:5], true)


def test_success_rate_counts_failures_as_failures():
    assert success_rate(np.array([1.0, 2.0, 3.0, 5.0, np.nan])) == pytest.approx(0.6)
    assert success_rate(np.array([1.0, 2.0, 3.0, 5.0]), threshold_mm=1.5) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        success_rate(np.array([]))


def test_error_auc_on_hand_computed_values():
    errors = np.array([0.0, 1.5, 3.0, 6.0, np.nan])  # the NaN: no answer, an infinite error
    # Each case adds max(0, 1 - e / t): at 3 mm 1 + 0.5; at 6 mm 1 + 0.75 + 0.5; at 10 mm
    # 1 + 0.85 + 0.7 + 0.4.
    assert error_auc(errors, 3.0) == pytest.approx(1.5 / 5)
    assert error_auc(errors, 6.0) == pytest.approx(2.25 / 5)
    assert error_auc(errors, 10.0) == pytest.approx(2.95 / 5)
    assert error_auc(np.zeros(4), 5.0) == 1.0 and error_auc(np.full(3, np.nan), 5.0) == 0.0
    with pytest.raises(ValueError):
        error_auc(np.array([]), 3.0)
    with pytest.raises(ValueError):
        error_auc(errors, 0.0)


@settings(max_examples=30, deadline=None)
@given(errors=st.lists(st.one_of(st.floats(0.0, 20.0), st.just(float("nan"))), min_size=1, max_size=12))
def test_error_auc_is_the_normalised_area_under_the_cumulative_error_curve(errors):
    e = np.array(errors)
    steps = np.linspace(0.0, 5.0, 50_001)
    recall = (np.nan_to_num(e, nan=np.inf)[None, :] <= steps[:, None]).mean(axis=1)
    area = np.trapezoid(recall, steps) / 5.0
    assert error_auc(e, 5.0) == pytest.approx(area, abs=1e-3)
