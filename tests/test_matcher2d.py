"""The 2D matcher: size, shapes, coarse mutual matching, fine refinement, weights, ``crossreg match``."""

import csv

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from crossreg.cli import app
from crossreg.features.weights import ModelLoadError, save_weights
from crossreg.image import from_array
from crossreg.imageio import save
from crossreg.matcher2d.match import (
    KIND,
    Matcher2dConfig,
    cell_centres,
    coarse_matches,
    dual_softmax,
    load_matcher,
    match_images,
    refine,
)
from crossreg.matcher2d.net import MatcherNet, structure_input

runner = CliRunner()


def test_network_is_small_and_gives_maps_of_the_documented_shapes():
    net = MatcherNet()
    assert sum(p.numel() for p in net.parameters()) <= 3_000_000
    # inputs at half resolution of 64 x 96 and 48 x 64 images; a 6 x 8 coarse grid is padded for attention
    x0, x1 = torch.rand(2, 4, 32, 48), torch.rand(2, 4, 24, 32)
    mask1 = torch.ones(2, 6 * 8, dtype=torch.bool)
    mask1[1] = False  # a pair with no valid key still gives finite features
    f0, f1, fine0, fine1 = net(x0, x1, torch.ones(2, 8 * 12, dtype=torch.bool), mask1)
    assert f0.shape == (2, 96, 96) and f1.shape == (2, 48, 96)
    assert fine0.shape == (2, 32, 16, 24) and fine1.shape == (2, 32, 12, 16)
    assert bool(torch.isfinite(f0).all()) and bool(torch.isfinite(f1).all())


def test_structure_input_sees_edges_not_their_polarity():
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 1, 32, 48, generator=gen)
    mask = torch.ones_like(image, dtype=torch.bool)
    mask[..., :, :8] = False
    x, inverted = structure_input(image, mask), structure_input(1 - image, mask)
    assert x.shape == (1, 4, 16, 24)
    torch.testing.assert_close(inverted[:, 0], -x[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(inverted[:, 1:], x[:, 1:], atol=1e-5, rtol=0)
    assert float(x[..., :4].abs().max()) == 0 and float(x[:, 1].abs().max()) > 0


def test_coarse_matches_recover_a_permutation_and_respect_masks():
    gen = torch.Generator().manual_seed(0)
    f0 = torch.randn(1, 40, 32, generator=gen)
    order = torch.randperm(40, generator=gen)
    f1 = f0[:, order]
    mask1 = torch.ones(1, 40, dtype=torch.bool)
    mask1[0, :5] = False
    b, i, j, score = coarse_matches(f0, f1, torch.ones(1, 40, dtype=torch.bool), mask1, 0.05, 0.2)
    assert len(i) == 35 and torch.equal(order[j], i) and bool((j >= 5).all()) and float(score.min()) > 0.2
    assert bool((b == 0).all())


def test_coarse_matches_are_the_mutual_maxima_of_the_dual_softmax():
    gen = torch.Generator().manual_seed(2)
    f0, f1 = torch.randn(3, 50, 16, generator=gen), torch.randn(3, 60, 16, generator=gen)
    f1[:, :30] = f0[:, 10:40] + 0.5 * torch.randn(3, 30, 16, generator=gen)
    mask0, mask1 = torch.rand(3, 50, generator=gen) > 0.2, torch.rand(3, 60, generator=gen) > 0.2
    confidence = dual_softmax(f0, f1, mask0, mask1, 0.1)
    keep = (confidence > 0.05) & (confidence == confidence.amax(2, keepdim=True))
    keep &= confidence == confidence.amax(1, keepdim=True)
    b, i, j, score = coarse_matches(f0, f1, mask0, mask1, 0.1, 0.05)
    expected = torch.nonzero(keep)
    assert len(expected) > 20
    assert torch.equal(torch.stack([b, i, j], 1), expected)
    torch.testing.assert_close(score, confidence[keep], rtol=1e-4, atol=1e-6)


def test_refinement_finds_a_known_offset_in_its_window():
    gen = torch.Generator().manual_seed(1)
    fine = torch.randn(1, 48, 16, 16, generator=gen) * 3
    shifted = torch.roll(fine, shifts=(-1, 1), dims=(2, 3))  # content moves 1 fine pixel left... and down
    points0 = cell_centres(torch.tensor([9, 18, 27]), 8)  # cell centres away from the border
    offset = refine(fine, shifted, torch.zeros(3, dtype=torch.long), points0, points0, window=5)
    # shifted[y, x] = fine[y + 1, x - 1]: what sits at p in fine sits at p + (4, -4) px in shifted
    torch.testing.assert_close(offset, torch.tensor([[4.0, -4.0]] * 3), atol=0.05, rtol=0)


def test_match_images_pads_any_size_and_keeps_points_inside():
    net = MatcherNet().eval()
    found = match_images(net, torch.rand(45, 70), torch.rand(50, 41), config=Matcher2dConfig(threshold=0))
    assert len(found) > 0 and found.points0_px.shape == found.points1_px.shape == (len(found), 2)
    assert bool((found.points0_px.max(0).values <= torch.tensor([69, 44])).all())
    assert bool((found.points1_px.max(0).values <= torch.tensor([40, 49])).all())


def test_the_shipped_model_is_trained_and_carded_and_its_absence_one_clear_error(monkeypatch, tmp_path):
    import crossreg.matcher2d.match as match_module

    _, meta = load_matcher(None)
    assert meta["kind"] == KIND and meta["steps"] >= 16000 and meta["commit"]
    card = match_module.shipped_weights(match_module.SHIPPED).with_suffix(".md")
    assert f"{meta['steps']:,}" in card.read_text()  # the card describes this very file
    monkeypatch.setattr(match_module, "shipped_weights", lambda name: tmp_path / name)
    with pytest.raises(ModelLoadError, match="crossreg train matcher"):
        load_matcher(None)


@pytest.fixture()
def model_and_images(tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "m.pt"
    save_weights(model, MatcherNet(), KIND, {"steps": 0})
    rng = np.random.default_rng(0)
    paths = []
    for name, spacing, origin in (("a", (0.5, 0.5), (10.0, -20.0)), ("b", (0.8, 0.8), (-5.0, 3.0))):
        image = from_array(rng.random((64, 80)).astype(np.float32), spacing, origin)
        save(image, tmp_path / f"{name}.nii.gz")
        paths.append(tmp_path / f"{name}.nii.gz")
    return model, paths


def test_match_cli_writes_world_matches_and_refuses_to_overwrite(model_and_images, tmp_path):
    model, (a, b) = model_and_images
    out = tmp_path / "m.csv"
    args = ["match", str(a), str(b), "--out", str(out), "--weights", str(model), "--threshold", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with out.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "fixed_x", "fixed_y", "moving_x", "moving_y", "inlier", "confidence"]
    values = np.array(rows[1:], float)
    assert len(values) > 0
    # world mm of each image: a spans x 10..49.5, y -20..11.5; b spans x -5..58.2, y 3..53.4
    assert values[:, 1].min() >= 10 - 1e-6 and values[:, 1].max() <= 49.5 + 1e-6
    assert values[:, 4].min() >= 3 - 1e-6 and values[:, 4].max() <= 53.4 + 1e-6
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.output and "Traceback" not in again.output
    missing = runner.invoke(
        app, ["match", str(a), str(tmp_path / "no.nii.gz"), "--out", str(tmp_path / "x.csv")]
    )
    assert missing.exit_code == 2 and not (tmp_path / "x.csv").exists()
