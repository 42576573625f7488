"""Matching: known correspondences are found, the ratio and mutual tests do what they say, chunking
changes nothing, and the result equals a brute-force reference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreg.matching import MatchConfig, match, match_shortlisted


def reference_pairs(desc0: np.ndarray, desc1: np.ndarray, max_ratio: float, mutual: bool) -> dict:
    """Brute-force matches {(i0, i1): (distance, ratio)} from full float64 distance matrices."""
    if len(desc0) == 0 or len(desc1) == 0:
        return {}
    dist = np.linalg.norm(desc0[:, None] - desc1[None], axis=-1)
    order = np.argsort(dist, axis=1, kind="stable")
    best = dist[np.arange(len(desc0)), order[:, 0]]
    second = dist[np.arange(len(desc0)), order[:, 1]] if len(desc1) > 1 else np.full(len(desc0), np.inf)
    ratio = np.where(second > 0, best / np.where(second > 0, second, 1.0), 1.0)
    back = np.argmin(dist, axis=0)
    return {
        (i, int(order[i, 0])): (best[i], ratio[i])
        for i in range(len(desc0))
        if ratio[i] <= max_ratio and (not mutual or back[order[i, 0]] == i)
    }


def noisy_permutation(
    n: int, dim: int, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """desc0 (n, dim), desc1 = desc0[perm] + noise, and perm (n,)."""
    g = torch.Generator().manual_seed(seed)
    desc0 = torch.randn(n, dim, generator=g)
    perm = torch.randperm(n, generator=g)
    return desc0, desc0[perm] + noise * torch.randn(n, dim, generator=g), perm


def test_recovers_known_permutation_of_noisy_descriptors():
    desc0, desc1, perm = noisy_permutation(500, 64, noise=0.1, seed=0)
    m = match(desc0, desc1)
    assert len(m) == 500
    assert torch.equal(m.i0, torch.arange(500))
    assert torch.equal(perm[m.i1], m.i0)
    np.testing.assert_allclose(m.distance, torch.linalg.norm(desc0[m.i0] - desc1[m.i1], dim=1), rtol=1e-4)
    assert m.i0.dtype == m.i1.dtype == torch.long


def test_ratio_test_removes_ambiguous_duplicates():
    desc0, desc1, perm = noisy_permutation(300, 32, noise=0.1, seed=1)
    partner = torch.argsort(perm)  # desc1[partner[i]] is the noisy copy of desc0[i]
    # A second, nearly identical copy of the true partner of each of desc0[:20].
    twins = desc1[partner[:20]] + 0.01 * torch.randn(20, 32, generator=torch.Generator().manual_seed(2))
    desc1 = torch.cat([desc1, twins])
    kept = match(desc0, desc1, MatchConfig(max_ratio=0.9, mutual=False))
    assert set(kept.i0.tolist()) == set(range(20, 300))
    assert bool((kept.ratio <= 0.9).all())
    everything = match(desc0, desc1, MatchConfig(max_ratio=1.0, mutual=False))
    assert len(everything) == 300
    assert bool((everything.ratio[:20] > 0.9).all())


def test_exact_duplicates_have_ratio_one():
    desc0 = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    desc1 = torch.tensor([[0.1, 0.0], [0.1, 0.0], [5.0, 5.2]])
    m = match(desc0, desc1, MatchConfig(max_ratio=1.0, mutual=False))
    assert m.ratio.tolist() == pytest.approx([1.0, 0.2 / np.hypot(4.9, 5.0)], rel=1e-4)
    assert match(desc0, desc1, MatchConfig(max_ratio=0.99, mutual=False)).i0.tolist() == [1]


def test_mutual_check_drops_one_sided_neighbours():
    # Both desc0 rows have desc1[0] as nearest neighbour, but desc1[0] is nearest to desc0[1] only.
    desc0, desc1 = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.9]])
    mutual = match(desc0, desc1, MatchConfig(mutual=True))
    assert (mutual.i0.tolist(), mutual.i1.tolist()) == ([1], [0])
    one_sided = match(desc0, desc1, MatchConfig(mutual=False))
    assert (one_sided.i0.tolist(), one_sided.i1.tolist()) == ([0, 1], [0, 0])
    # With a single candidate the second-nearest is +inf, so the ratio is 0 and the test passes.
    assert one_sided.ratio.tolist() == [0.0, 0.0]
    assert one_sided.distance.tolist() == pytest.approx([0.9, 0.1])


def test_chunked_result_equals_unchunked():
    g = torch.Generator().manual_seed(3)
    desc0, desc1 = torch.randn(300, 16, generator=g), torch.randn(200, 16, generator=g)
    whole = match(desc0, desc1, MatchConfig(chunk_size=10_000))
    for chunk_size in (1, 7, 64):
        chunked = match(desc0, desc1, MatchConfig(chunk_size=chunk_size))
        assert torch.equal(chunked.i0, whole.i0) and torch.equal(chunked.i1, whole.i1)
        torch.testing.assert_close(chunked.distance, whole.distance)
        torch.testing.assert_close(chunked.ratio, whole.ratio)
    assert 0 < len(whole) < 200


@settings(max_examples=60, deadline=None)
@given(
    n0=st.integers(0, 25),
    n1=st.integers(0, 25),
    chunk_size=st.integers(1, 30),
    max_ratio=st.sampled_from([0.6, 0.9, 1.0]),
    mutual=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_equals_brute_force_reference(n0, n1, chunk_size, max_ratio, mutual, seed):
    rng = np.random.default_rng(seed)
    desc0, desc1 = rng.normal(size=(n0, 4)), rng.normal(size=(n1, 4))
    m = match(torch.from_numpy(desc0), torch.from_numpy(desc1), MatchConfig(max_ratio, mutual, chunk_size))
    expected = reference_pairs(desc0, desc1, max_ratio, mutual)
    assert list(zip(m.i0.tolist(), m.i1.tolist(), strict=True)) == sorted(expected)
    values = np.array([expected[p] for p in sorted(expected)]).reshape(-1, 2)
    np.testing.assert_allclose(m.distance.numpy(), values[:, 0], rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(m.ratio.numpy(), values[:, 1], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(("n0", "n1"), [(0, 5), (5, 0), (0, 0)])
def test_empty_inputs_give_empty_matches(n0, n1):
    m = match(torch.randn(n0, 8), torch.randn(n1, 8))
    assert len(m) == 0
    assert m.i0.dtype == m.i1.dtype == torch.long
    assert m.distance.shape == m.ratio.shape == (0,)


def test_rejects_descriptors_of_different_length():
    with pytest.raises(ValueError, match="descriptor lengths differ"):
        match(torch.randn(3, 8), torch.randn(3, 9))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    desc0, desc1, perm = noisy_permutation(3000, 64, noise=0.1, seed=4)
    cpu = match(desc0, desc1, MatchConfig(chunk_size=500))
    gpu = match(desc0.cuda(), desc1.cuda(), MatchConfig(chunk_size=500))
    assert gpu.i0.device.type == "cuda"
    assert torch.equal(gpu.i0.cpu(), cpu.i0) and torch.equal(gpu.i1.cpu(), cpu.i1)
    assert torch.equal(perm[cpu.i1], cpu.i0)


def test_shortlisted_matching_takes_the_nearest_in_both_descriptors_among_the_shortlist():
    # Brute force: for each row, the k nearest in the first descriptor, then the smallest mean of the
    # two squared distances among them; the second descriptor is asked for the shortlists only.
    g = torch.Generator().manual_seed(3)
    unit = lambda x: torch.nn.functional.normalize(x, dim=1)  # noqa: E731
    desc0, desc1 = unit(torch.randn(40, 8, generator=g)), unit(torch.randn(300, 8, generator=g))
    second0, second1 = unit(torch.randn(40, 5, generator=g)), unit(torch.randn(300, 5, generator=g))
    asked = []

    def second_of(index: torch.Tensor) -> torch.Tensor:
        asked.append(tuple(index.shape))
        return second1[index]

    found = match_shortlisted(desc0, desc1, second0, second_of, k=6, chunk_size=16)
    assert asked == [(40, 6)]
    d1 = torch.cdist(desc0.double(), desc1.double()) ** 2
    shortlist = d1.topk(6, dim=1, largest=False).indices
    d2 = torch.cdist(second0.double(), second1.double()) ** 2
    combined = 0.5 * (d1 + d2).gather(1, shortlist)
    expected = shortlist[torch.arange(40), combined.argmin(dim=1)]
    assert torch.equal(found.i0, torch.arange(40)) and torch.equal(found.i1, expected)
    np.testing.assert_allclose(found.distance**2, combined.min(dim=1).values, rtol=1e-4)
    assert (found.ratio <= 1).all()
    # With a shortlist of everything it is the nearest in both descriptors over all rows, which for
    # some rows lies outside their 6 nearest: those never win with k = 6.
    everything = match_shortlisted(desc0, desc1, second0, lambda i: second1[i], k=300)
    assert torch.equal(everything.i1, (0.5 * (d1 + d2)).argmin(dim=1))
    assert (everything.i1 != found.i1).sum() >= 5
