"""Fitting: the closed forms RANSAC fits its minimal samples with give the SVD's answer, and the thin-sample
test gives the singular values' verdict; the float32 screen never loses the best hypothesis."""

import importlib
import math

import pytest
import torch

from crossreg.estimate import RansacConfig
from crossreg.fitting import MIN_SPREAD_FRACTION, degenerate, fit_homogeneous, fit_minimal, thin

estimate_module = importlib.import_module("crossreg.estimate")


def random_samples(n: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n unrelated samples of k points (src, dst (n, k, d), float64), spread over 100 mm: most need a
    rotation far from identity, and in 3D about half are mirror images of what a rotation gives."""
    generator = torch.Generator().manual_seed(seed)
    src = 100 * torch.rand(n, k, d, generator=generator, dtype=torch.float64)
    return src, 100 * torch.rand(n, k, d, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize(
    ("model", "ndim"), [("rigid", 3), ("rigid", 2), ("similarity", 3), ("similarity", 2)]
)
def test_closed_form_minimal_fits_equal_the_svd(model, ndim):
    src, dst = random_samples(2000, ndim, ndim, seed=ndim)
    usable = ~degenerate(src, dst, model, threshold_mm=4.0)
    closed, svd = fit_minimal(src, dst, model)[usable], fit_homogeneous(src, dst, model)[usable]
    assert usable.sum() > 1900
    assert torch.allclose(closed, svd, atol=1e-9)
    assert bool((torch.linalg.det(closed[:, :ndim, :ndim]) > 0).all())


def test_closed_form_fits_exact_triangles_exactly():
    skew = torch.tensor([[0.0, -0.3, 0.2], [0.3, 0.0, -0.1], [-0.2, 0.1, 0.0]], dtype=torch.float64)
    rotation = torch.linalg.matrix_exp(skew)
    src, _ = random_samples(50, 3, 3, seed=7)
    dst = src @ rotation.T + torch.tensor([5.0, -3.0, 12.0], dtype=torch.float64)
    h = fit_minimal(src, dst, "rigid")
    assert torch.allclose(h[:, :3, :3], rotation.expand(50, 3, 3), atol=1e-12)
    assert torch.allclose(h[:, :3, 3], torch.tensor([5.0, -3.0, 12.0], dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize(("k", "d"), [(2, 2), (2, 3), (3, 2), (3, 3), (4, 3)])
def test_thin_samples_are_those_of_small_singular_value(k, d):
    points, _ = random_samples(4000, k, d, seed=k + d)
    # Squash half of them towards a line so that the verdicts are mixed, many near the threshold.
    squash = torch.linspace(0.0, 1.0, 4000, dtype=torch.float64)[:, None, None]
    points[:2000, :, 1:] *= squash[:2000] * 0.1
    centred = points - points.mean(dim=-2, keepdim=True)
    spread = torch.linalg.svdvals(centred)[..., k - 2] / math.sqrt(k)
    expected = spread < MIN_SPREAD_FRACTION * 4.0
    assert 100 < int(expected.sum()) < 3900
    assert torch.equal(thin(points, 4.0), expected)


def test_coincident_points_are_thin():
    assert bool(thin(torch.zeros(1, 3, 3, dtype=torch.float64), 4.0).all())


@pytest.fixture(params=["highest", "medium"])
def matmul_precision(request):
    """torch's float32 matmul precision during a test (medium: bfloat16 products where supported)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(request.param)
    yield request.param
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_screen_bounds_hold_and_keep_the_best_hypothesis(seed, matmul_precision):
    # A few percent of inliers among 800 matches, as dense matching gives.
    generator = torch.Generator().manual_seed(seed)
    src = 200 * torch.rand(800, 3, generator=generator, dtype=torch.float64) - 100
    dst = 200 * torch.rand(800, 3, generator=generator, dtype=torch.float64) - 100
    dst[:40] = src[:40] + 10 + torch.randn(40, 3, generator=generator, dtype=torch.float64)
    config = RansacConfig(iterations=3000)
    sample = estimate_module._draw(800, 3, config, seed)
    h = fit_minimal(src[sample], dst[sample], "rigid")
    h = h[~degenerate(src[sample], dst[sample], "rigid", config.threshold_mm)]
    exact = estimate_module._score(src, dst, h, "rigid", config.threshold_mm)
    low, high = estimate_module._screen(src, dst, h, config)
    assert bool((low <= exact).all() and (exact <= high).all())
    near = torch.nonzero(high >= low.max())[:, 0]
    assert int(exact.argmax()) in near.tolist()
    assert len(near) < 50 or matmul_precision != "highest"
