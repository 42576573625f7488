"""Estimation: known transforms recovered from matches with outliers, never a reflection for rigid,
failure on random matches, a confidence that means what it says, invariance to match order."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreg.errors import RegistrationFailed
from crossreg.estimate import Estimate, RansacConfig, determination, estimate, fit
from crossreg.transform import AffineTransform

EXTENT_MM = 100.0


def rotation(ndim: int, angle_deg: float, axis=(1.0, 2.0, 2.0)) -> np.ndarray:
    """(d, d) rotation by angle_deg (about ``axis`` in 3D, Rodrigues)."""
    a = np.radians(angle_deg)
    if ndim == 2:
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    x, y, z = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def known_transform(model: str, ndim: int) -> AffineTransform:
    """15 degrees and 15 mm; similarity scales by 1.2, affine adds anisotropic scale and shear."""
    matrix = rotation(ndim, 15.0)
    if model == "similarity":
        matrix = 1.2 * matrix
    elif model == "affine":
        matrix = matrix @ (np.diag(np.linspace(0.85, 1.15, ndim)) + 0.1 * np.triu(np.ones((ndim, ndim)), 1))
    translation = 15.0 * np.ones(ndim) / np.sqrt(ndim)
    return AffineTransform(matrix, translation, model)


def make_matches(
    transform: AffineTransform, n: int, outlier_fraction: float, noise_mm: float, seed: int, threshold_mm=4.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """src (n, d), dst (n, d) and the true inlier mask (n,).

    Inliers are ``transform(src)`` plus Gaussian noise per axis; outliers are uniform random dst points
    kept at least 3 thresholds away from where the true transform sends their src, so the ideal inlier
    set is known exactly.
    """
    rng = np.random.default_rng(seed)
    ndim = transform.ndim
    src = rng.uniform(-EXTENT_MM / 2, EXTENT_MM / 2, (n, ndim))
    dst = transform.apply(src) + rng.normal(0, noise_mm, (n, ndim))
    outlier = rng.permutation(n) < round(outlier_fraction * n)
    for i in np.flatnonzero(outlier):
        while np.linalg.norm(dst[i] - transform.apply(src[i : i + 1])[0]) < 3 * threshold_mm:
            dst[i] = rng.uniform(-EXTENT_MM / 2, EXTENT_MM / 2, ndim)
    return src, dst, ~outlier


def mean_error_mm(a: AffineTransform, b: AffineTransform, points_mm: np.ndarray) -> float:
    return float(np.linalg.norm(a.apply(points_mm) - b.apply(points_mm), axis=1).mean())


def least_squares(src: np.ndarray, dst: np.ndarray, model: str) -> AffineTransform:
    matrix, translation = fit(src, dst, model)
    return AffineTransform(matrix.numpy(), translation.numpy(), model)


@pytest.mark.parametrize(
    ("model", "ndim"),
    [("rigid", 3), ("rigid", 2), ("similarity", 3), ("similarity", 2), ("affine", 3), ("affine", 2)],
)
def test_recovers_known_transform_from_noisy_matches_with_outliers(model, ndim):
    truth = known_transform(model, ndim)
    src, dst, inlier = make_matches(truth, n=200, outlier_fraction=0.6, noise_mm=0.5, seed=ndim)
    result = estimate(src, dst, model=model)
    assert result.transform.model == model
    assert np.array_equal(result.inliers.numpy(), inlier)
    # What the noise allows: the least-squares fit on exactly the true inliers, reached to 0.05 mm
    # (in fact to rounding), and within a few tenths of a mm of the truth (~0.15 mm expected).
    oracle = least_squares(src[inlier], dst[inlier], model)
    assert mean_error_mm(result.transform, oracle, src) < 0.05
    np.testing.assert_allclose(result.transform.apply(src), oracle.apply(src), atol=1e-6)
    assert mean_error_mm(result.transform, truth, src) < 0.4
    assert 0.5 < result.rmse_mm < 1.2


@pytest.mark.parametrize("ndim", [2, 3])
def test_recovers_exact_transform_without_noise(ndim):
    truth = known_transform("rigid", ndim)
    src, dst, _ = make_matches(truth, n=200, outlier_fraction=0.6, noise_mm=0.0, seed=10 + ndim)
    result = estimate(src, dst)
    assert abs(result.transform.rotation_deg() - 15.0) < 1e-6
    np.testing.assert_allclose(result.transform.apply(src), truth.apply(src), atol=1e-6)
    assert result.rmse_mm < 1e-6


def test_rigid_fit_never_returns_a_reflection():
    rng = np.random.default_rng(5)
    src = rng.normal(size=(1000, 3, 3))
    dst = rng.normal(size=(1000, 3, 3))
    dst[:, :, 0] *= -1
    matrix, _ = fit(src, dst, "rigid")
    eye = torch.eye(3, dtype=matrix.dtype).expand(1000, 3, 3)
    torch.testing.assert_close(matrix @ matrix.mT, eye)
    torch.testing.assert_close(torch.linalg.det(matrix), torch.ones(1000, dtype=matrix.dtype))
    # Mirrored correspondences: the best proper rotation, not the mirror that fits them exactly.
    mirror = np.diag([-1.0, 1.0, 1.0])
    points = rng.normal(scale=30, size=(50, 3))
    single, _ = fit(points, points @ mirror.T, "rigid")
    assert np.linalg.det(single.numpy()) == pytest.approx(1.0)
    affine, _ = fit(points, points @ mirror.T, "affine")
    np.testing.assert_allclose(affine.numpy(), mirror, atol=1e-9)


def test_rigid_estimate_on_mirrored_matches_stays_proper():
    src = np.random.default_rng(6).uniform(-50, 50, (200, 3))
    result = estimate(src, src * np.array([-1.0, 1.0, 1.0]), "rigid")
    assert np.linalg.det(result.transform.matrix) == pytest.approx(1.0)
    # Only the slab near the mirror plane, which a half-turn maps close to itself, agrees.
    assert result.n_inliers < 50


@pytest.mark.parametrize(("ndim", "extent_mm"), [(3, 100.0), (2, 300.0)])
def test_pure_random_matches_fail(ndim, extent_mm):
    rng = np.random.default_rng(7)
    src, dst = rng.uniform(0, extent_mm, (2, 200, ndim))
    with pytest.raises(RegistrationFailed, match=r"only \d inlier matches \(need 8\)"):
        estimate(src, dst)


def test_too_few_or_degenerate_matches_fail():
    rng = np.random.default_rng(8)
    with pytest.raises(RegistrationFailed, match=r"only 5 matches \(need 8\)"):
        estimate(rng.normal(size=(5, 3)), rng.normal(size=(5, 3)))
    with pytest.raises(RegistrationFailed, match=r"only 2 matches \(need 3\)"):
        estimate(rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), config=RansacConfig(min_inliers=0))
    line = np.outer(np.linspace(-50, 50, 40), [1.0, 2.0, 3.0])
    with pytest.raises(RegistrationFailed, match="degenerate"):
        estimate(line, line + 5.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_confidence_high_for_clean_recovery(ndim):
    src, dst, _ = make_matches(
        known_transform("rigid", ndim), n=200, outlier_fraction=0.7, noise_mm=0.5, seed=9
    )
    result = estimate(src, dst)
    assert result.confidence > 0.9
    assert 0.0 <= result.confidence <= 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confidence_low_for_random_matches(seed):
    rng = np.random.default_rng(seed)
    src, dst = rng.uniform(0, EXTENT_MM, (2, 200, 3))
    result = estimate(src, dst, config=RansacConfig(min_inliers=0))
    assert result.confidence < 0.5


def true_among_random(n_true: int, extent_mm: float, unit_mm: float = 1.0) -> Estimate:
    """Estimate from n_true noisy true matches among 200, the rest random, all spread over extent_mm.

    unit_mm: the length unit the points and the 4 mm threshold are given in (10 for centimetres).
    """
    rng = np.random.default_rng(1)
    src, dst = rng.uniform(-extent_mm / 2, extent_mm / 2, (2, 200, 3))
    truth = known_transform("rigid", 3)
    dst[:n_true] = truth.apply(src[:n_true]) + rng.normal(0, 0.5, (n_true, 3))
    config = RansacConfig(min_inliers=0, threshold_mm=4.0 / unit_mm)
    return estimate(src / unit_mm, dst / unit_mm, config=config)


def test_confidence_discounts_inliers_that_chance_explains():
    # 12 true matches stand out among 188 random ones spread over 100 mm, not over 20 mm.
    wide, dense = true_among_random(12, 100.0), true_among_random(12, 20.0)
    assert wide.n_inliers == 12 and wide.confidence > 0.99
    assert dense.n_inliers >= 12 and dense.confidence < 0.5


def test_confidence_does_not_depend_on_units():
    mm, cm = true_among_random(10, 40.0), true_among_random(10, 40.0, unit_mm=10.0)
    assert mm.n_inliers == cm.n_inliers == 10
    assert mm.confidence == pytest.approx(cm.confidence, abs=1e-9)
    assert 0.5 < mm.confidence < 0.99


def test_deterministic_and_accepts_numpy_or_torch():
    src, dst, _ = make_matches(
        known_transform("affine", 3), n=100, outlier_fraction=0.5, noise_mm=1.0, seed=4
    )
    # Without local optimisation the result is the raw best hypothesis, so it shows the sampling.
    config = RansacConfig(refine_iterations=0)
    a = estimate(src, dst, "affine", config, seed=3)
    b = estimate(torch.from_numpy(src).float(), torch.from_numpy(dst).float(), "affine", config, seed=3)
    np.testing.assert_allclose(a.transform.homogeneous(), b.transform.homogeneous(), atol=1e-4)
    assert torch.equal(a.inliers, b.inliers)
    c = estimate(src, dst, "affine", config, seed=3)
    assert np.array_equal(a.transform.homogeneous(), c.transform.homogeneous())
    other_seed = estimate(src, dst, "affine", config, seed=4)
    assert not np.array_equal(a.transform.homogeneous(), other_seed.transform.homogeneous())


def test_weighted_fit_ignores_zero_weight_points():
    rng = np.random.default_rng(11)
    src, dst = rng.normal(scale=20, size=(2, 30, 3))
    weights = (np.arange(30) < 20).astype(float)
    for model in ("rigid", "similarity", "affine"):
        weighted = fit(src, dst, model, weights)
        subset = fit(src[:20], dst[:20], model)
        for w, s in zip(weighted, subset, strict=True):
            torch.testing.assert_close(w, s)


def test_batched_fit_equals_one_at_a_time():
    rng = np.random.default_rng(12)
    src, dst = rng.normal(scale=20, size=(2, 6, 4, 3))
    for model in ("rigid", "similarity", "affine"):
        matrix, translation = fit(src, dst, model)
        assert matrix.shape == (6, 3, 3) and translation.shape == (6, 3)
        for i in range(6):
            m, t = fit(src[i], dst[i], model)
            torch.testing.assert_close(matrix[i], m)
            torch.testing.assert_close(translation[i], t)


angles = st.lists(st.floats(-180, 180), min_size=3, max_size=3)
vectors = st.lists(st.floats(-100, 100), min_size=3, max_size=3)


@settings(max_examples=50, deadline=None)
@given(angles, vectors, st.floats(0.5, 2.0), st.sampled_from([2, 3]), st.integers(0, 2**16))
def test_fit_of_exact_correspondences_reproduces_the_transform(angles_deg, translation, scale, ndim, seed):
    if ndim == 2:
        matrix = rotation(2, angles_deg[0])
    else:
        matrix = rotation(3, angles_deg[0], axis=np.array([*angles_deg[1:], 1.0]))
    src = np.random.default_rng(seed).normal(scale=30, size=(10, ndim))
    for model, linear in (("rigid", matrix), ("similarity", scale * matrix)):
        dst = src @ linear.T + np.array(translation[:ndim])
        m, t = fit(src, dst, model)
        np.testing.assert_allclose(m.numpy(), linear, atol=1e-9)
        np.testing.assert_allclose(t.numpy(), translation[:ndim], atol=1e-8)


@settings(max_examples=8, deadline=None)
@given(st.sampled_from(["rigid", "similarity", "affine"]), st.sampled_from([2, 3]), st.integers(0, 2**16))
def test_result_does_not_depend_on_match_order(model, ndim, seed):
    src, dst, _ = make_matches(
        known_transform(model, ndim), n=120, outlier_fraction=0.5, noise_mm=0.5, seed=seed
    )
    perm = np.random.default_rng(seed + 1).permutation(len(src))
    config = RansacConfig(iterations=1000)
    a = estimate(src, dst, model, config)
    b = estimate(src[perm], dst[perm], model, config)
    np.testing.assert_allclose(a.transform.apply(src), b.transform.apply(src), atol=1e-6)
    assert torch.equal(a.inliers[perm], b.inliers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_fit_on_cuda_equals_cpu():
    rng = np.random.default_rng(13)
    src, dst = torch.from_numpy(rng.normal(scale=20, size=(2, 64, 5, 3)))
    for model in ("rigid", "similarity", "affine"):
        matrix, translation = fit(src.cuda(), dst.cuda(), model)
        assert matrix.device.type == "cuda"
        expected = fit(src, dst, model)
        torch.testing.assert_close(matrix.cpu(), expected[0])
        torch.testing.assert_close(translation.cpu(), expected[1])


def _grid_region(half_mm: float, step_mm: float = 4.0) -> np.ndarray:
    axis = np.arange(-half_mm, half_mm + 1e-9, step_mm)
    return np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)


def test_determination_is_high_for_spread_inliers_and_low_for_a_strip():
    rng = np.random.default_rng(0)
    region = _grid_region(60.0)
    spread = rng.uniform(-50, 50, (30, 2))
    strip = np.column_stack([rng.uniform(-10, 10, 11), rng.uniform(-2, 2, 11)])
    assert determination(spread, region) > 0.99
    # 11 inliers in a 20 x 4 mm strip leave the rotation loose 60 mm away: worse than one match.
    assert determination(strip, region) < 0.5
    assert determination(strip, region) < determination(strip, _grid_region(10.0))


def test_determination_matches_the_error_of_noisy_fits():
    # Monte Carlo: fit rigid transforms to noisy copies of the inliers; the fraction whose RMS error
    # over the region is below one match's RMS error is close to the closed form (same Gaussian model).
    rng = np.random.default_rng(1)
    inliers, region = rng.uniform(-15, 15, (8, 3)), rng.uniform(-60, 60, (400, 3))
    sigma, below = 1.0, []
    for _ in range(400):
        noisy = inliers + rng.normal(0, sigma, inliers.shape)
        matrix, translation = fit(inliers, noisy, "rigid")
        moved = region @ matrix.numpy().T + translation.numpy()
        error_sq = ((moved - region) ** 2).sum(axis=1).mean()
        below.append(error_sq < 3 * sigma**2)
    assert abs(np.mean(below) - determination(inliers, region)) < 0.08


def test_determination_needs_two_inliers():
    assert determination(np.zeros((1, 3)), np.ones((5, 3))) == 0.0


def test_independence_counts_a_patch_of_agreeing_neighbours_as_one():
    # Dense matching: neighbouring points' wrong matches agree with each other. 40 matches of a 6 mm
    # patch that one wrong transform explains, among 400 random ones, are no evidence of a right answer.
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 120, (440, 3))
    dst = rng.uniform(0, 120, (440, 3))
    patch = src[:40] = rng.uniform(50, 56, (40, 3))
    dst[:40] = patch + np.array([30.0, -10.0, 5.0])
    config = RansacConfig(iterations=2000, min_inliers=8)
    naive = estimate(src, dst, "rigid", config, seed=0)
    counted = estimate(src, dst, "rigid", RansacConfig(iterations=2000, independence_mm=8.0), seed=0)
    assert naive.n_inliers >= 40 and counted.n_inliers >= 40
    assert naive.confidence > 0.99 and counted.confidence < 0.5
    # Inliers spread over the whole volume stay convincing when counted by cells.
    spread = rng.uniform(0, 120, (60, 3))
    src[40:100], dst[40:100] = spread, spread + np.array([3.0, 1.0, -2.0])
    good = estimate(src, dst, "rigid", RansacConfig(iterations=2000, independence_mm=8.0), seed=0)
    assert good.n_inliers >= 60 and good.confidence > 0.99


def test_min_inlier_fraction_refuses_a_transform_most_matches_deny():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 120, (600, 3))
    dst = rng.uniform(0, 120, (600, 3))
    dst[:24] = src[:24] + np.array([5.0, -3.0, 2.0])  # 24 agreeing matches of 600: 4%
    assert estimate(src, dst, "rigid", RansacConfig(iterations=2000), seed=0).n_inliers >= 24
    with pytest.raises(RegistrationFailed, match="24 of 600"):
        estimate(src, dst, "rigid", RansacConfig(iterations=2000, min_inlier_fraction=0.05), seed=0)
