"""The matcher's synthetic pairs: exact ground truth, reproducible families, held-out families unseen,
benchmark slices left out of the real sources."""

import numpy as np
import pytest
import torch

from crossreg.datasets import mni152_path, mni152_t1
from crossreg.matcher2d.families import FAMILIES, HELD_OUT_FAMILIES, TRAIN_FAMILIES
from crossreg.matcher2d.pairs import PairConfig, make_pairs, read_at
from crossreg.matcher2d.sources import SourceConfig, SourcePool, bench_positions_mm, mni_slices, read_nifti

SMALL = PairConfig(size=(64, 64))


def _dot_pool() -> SourcePool:
    """One 320 x 320 source of Gaussian dots (sigma 2 px) every 40 px on black."""
    ys, xs = np.mgrid[0:320, 0:320].astype(float)
    dx, dy = (xs - 20) % 40 - 20, (ys - 20) % 40 - 20
    image = np.exp(-(dx**2 + dy**2) / (2 * 2.0**2))
    return SourcePool(torch.tensor(image, dtype=torch.float32)[None, None], torch.tensor([[320.0, 320.0]]))


def _centroid(image: torch.Tensor, centre: torch.Tensor, radius: int = 4) -> torch.Tensor:
    x, y = (round(float(v)) for v in centre)
    patch = image[y - radius : y + radius + 1, x - radius : x + radius + 1].double()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weight = patch / patch.sum()
    return torch.stack([x + (weight.sum(0) * offsets).sum(), y + (weight.sum(1) * offsets).sum()])


def test_ground_truth_carries_a_dot_of_image0_onto_the_same_dot_of_image1():
    config = PairConfig(
        size=(128, 128), families=("plain",), plain_share=1.0, real_share=1.0, zoom=(0.6, 0.6)
    )
    pairs = make_pairs(_dot_pool(), 10, config, torch.Generator().manual_seed(3))
    checked = 0
    for b in range(10):
        image0 = pairs.image0[b, 0] * pairs.valid0[b]
        inner = torch.zeros_like(image0)
        inner[8:-8, 8:-8] = image0[8:-8, 8:-8]
        top = torch.nonzero(inner == inner.max())[0]
        dot0 = _centroid(pairs.image0[b, 0], top.flip(0).float())
        landed = read_at(pairs.to1, torch.tensor([b]), dot0[None].float())[0].double()
        if not (landed.min() >= 8 and landed.max() <= 119):
            continue
        dot1 = _centroid(pairs.image1[b, 0], landed)
        assert torch.linalg.norm(landed - dot1) < 0.3, (b, landed, dot1)
        checked += 1
    assert checked >= 4


def test_same_seed_same_pairs_and_families_differ():
    first, second = (make_pairs(None, 4, SMALL, torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(first.image0, second.image0) and torch.equal(first.to1, second.to1)
    other = make_pairs(None, 4, SMALL, torch.Generator().manual_seed(8))
    assert not torch.equal(first.image0, other.image0)


def test_training_mode_never_draws_a_held_out_family():
    drawn = torch.cat(
        [make_pairs(None, 8, SMALL, torch.Generator().manual_seed(s)).family0 for s in range(6)]
    )
    names = {list(FAMILIES)[int(k)] for k in drawn}
    assert names <= set(TRAIN_FAMILIES) and len(names) >= 4
    for family in HELD_OUT_FAMILIES:
        with pytest.raises(ValueError, match="held out"):
            PairConfig(families=(family,))
        held = PairConfig(size=(64, 64), families=(family,), training=False)
        batch = make_pairs(None, 2, held, torch.Generator().manual_seed(0))
        assert {list(FAMILIES)[int(k)] for k in batch.family0} == {family}


def test_every_family_keeps_images_in_range_and_inside_their_mask():
    config = PairConfig(size=(64, 64), families=tuple(FAMILIES), training=False, plain_share=0.0)
    pairs = make_pairs(None, 14, config, torch.Generator().manual_seed(1))
    for image, mask in ((pairs.image0, pairs.mask0), (pairs.image1, pairs.mask1)):
        assert float(image.min()) >= 0 and float(image.max()) <= 1
        assert float(image[~mask].abs().max()) == 0


def test_bench_slices_are_where_simpleitk_puts_them_and_are_left_out():
    volume = mni152_t1(2)
    middle = volume.grid.index_to_world((volume.grid.size_xyz // 2)[None].astype(float))[0]
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(bench_positions_mm(), middle * lps_to_ras, atol=1e-4)
    array, _ = read_nifti(mni152_path("t1", 2))
    array = array / array.max()
    slices = mni_slices(SourceConfig(slice_step=1))
    for axis in range(3):
        for k in range(array.shape[axis] // 2 - 3, array.shape[axis] // 2 + 4):  # the bench slice +-6 mm
            cut = np.take(array, k, axis=axis).T[::-1]
            assert not any(s.shape == cut.shape and np.array_equal(s, cut) for s in slices), (axis, k)
    far = np.take(array, array.shape[2] // 2 + 12, axis=2).T[::-1]  # 24 mm away: used
    assert any(s.shape == far.shape and np.array_equal(s, far) for s in slices)
