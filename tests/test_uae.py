"""Universal anatomical embeddings: network shapes, map reading, weights files, and the shipped model
finding template points in synthetic subjects of the deformation family held out of its training."""

import ast
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch

from crossreg import datasets
from crossreg.config import RegisterConfig
from crossreg.errors import CrossregError
from crossreg.features import make_features
from crossreg.features.crosskey import default_weights_path
from crossreg.features.uae import (
    DEFAULT_WEIGHTS,
    EmbeddingConfig,
    EmbeddingFeatures,
    EmbeddingNet,
    embed_tensor,
    load_embedding_model,
    read_map,
    save_embedding_model,
)
from crossreg.features.weights import ModelLoadError, shipped_weights
from crossreg.locate import find_points
from crossreg.synth.geometry import apply_slab, random_slab, salient_landmarks
from crossreg.synth.labels import head_labels
from crossreg.synth.subjects import SubjectConfig, make_subject
from crossreg.train.embedding import TRAIN_FAMILIES, EmbeddingTrainConfig

SMALL = EmbeddingConfig(channels=(4, 8, 8), semantic_level=1, semantic_dim=6, local_dim=5, mind_input=False)


@pytest.mark.parametrize("ndim", [2, 3])
def test_maps_are_unit_vectors_of_the_input_size_whatever_it_is(ndim):
    torch.manual_seed(0)
    config = EmbeddingConfig(**{**SMALL.__dict__, "ndim": ndim})
    net = EmbeddingNet(config).eval()
    size = (13, 10, 7)[:ndim]
    semantic, local = embed_tensor(net, torch.randn(1, config.in_channels, *size))
    assert local.shape == (1, 5, *size)
    assert semantic.shape == (1, 6, *[-(-s // 2) for s in size])
    for m in (semantic, local):
        np.testing.assert_allclose(m.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)


def test_read_map_reads_voxel_centres_and_the_semantic_stride():
    torch.manual_seed(0)
    fine = torch.nn.functional.normalize(torch.randn(1, 4, 6, 8, 10), dim=1)
    index = torch.tensor([[0.0, 0.0, 0.0], [9.0, 7.0, 5.0], [3.0, 2.0, 1.0]])  # x, y, z
    expected = fine[0, :, [0, 5, 1], [0, 7, 2], [0, 9, 3]].T
    torch.testing.assert_close(read_map(fine, index, 1), expected)
    # A map at half resolution: full-resolution index 2 i reads its voxel i.
    torch.testing.assert_close(read_map(fine, 2 * index, 2), expected)


def test_weights_round_trip_and_refuse_a_model_of_another_kind(tmp_path):
    net = EmbeddingNet(SMALL)
    path = tmp_path / "small.pt"
    save_embedding_model(path, net, {"data": "test"})
    loaded, meta = load_embedding_model(path)
    assert loaded.config == SMALL and meta == {"data": "test"}
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v.half().float())
    with pytest.raises(ModelLoadError, match="a crosskey model, not a uae model"):
        load_embedding_model(default_weights_path())
    with pytest.raises(ModelLoadError, match="no such weights file"):
        load_embedding_model(tmp_path / "none.pt")


def test_shipped_model_matches_its_card_and_held_out_the_regional_family():
    net, meta = load_embedding_model()
    card = shipped_weights(DEFAULT_WEIGHTS).with_suffix(".md").read_text()
    call = ast.parse(re.search(r"`(EmbeddingConfig\(.*?\))`", card).group(1), mode="eval").body
    stated = EmbeddingConfig(**{k.arg: ast.literal_eval(k.value) for k in call.keywords})
    assert net.config == stated
    trained = meta["train_config"]
    assert set(trained["pool"]["families"]) == set(TRAIN_FAMILIES) and "regional" not in TRAIN_FAMILIES
    # `crossreg train embedding` with its defaults repeats the run.
    assert trained == asdict(EmbeddingTrainConfig()) and meta["steps"] == trained["steps"]
    assert f"{meta['steps']} steps" in card and meta["commit"] in card


@pytest.fixture(scope="module")
def template():
    return datasets.mni152_t1(2)


@pytest.fixture(scope="module")
def held_out_subject(template):
    """A T2-like subject of the regional family (never trained on); seed 91 was used for nothing else."""
    config = SubjectConfig(contrast="t2", families=("regional",))
    return make_subject(template, head_labels(template, datasets.mni152_tissues()), config, seed=91)


@pytest.fixture(scope="module")
def uae():
    return EmbeddingFeatures(load_embedding_model()[0])


def test_shipped_model_finds_template_points_in_a_held_out_subject(template, held_out_subject, uae):
    points = salient_landmarks(template, 24)
    found = find_points(template, points, held_out_subject.image, uae)
    error = np.linalg.norm(found.points_mm - np.asarray(held_out_subject.to_subject(points)), axis=1)
    assert error.mean() < 2.0 and np.percentile(error, 90) < 4.0, error.round(1)
    assert found.reliable.mean() >= 0.9
    # The subject moved the anatomy: without the search the points would be far off.
    assert np.linalg.norm(points - np.asarray(held_out_subject.to_subject(points)), axis=1).mean() > 4.0


def test_round_trip_flags_points_whose_anatomy_is_cut_away(template, held_out_subject, uae):
    slab = random_slab(held_out_subject.image, 0.4, seed=3)
    partial = apply_slab(held_out_subject.image, slab)
    points = salient_landmarks(template, 40)
    truth = np.asarray(held_out_subject.to_subject(points))
    across = truth @ slab.normal
    outside_mm = np.maximum(slab.lo_mm - across, across - slab.hi_mm)  # < 0 inside the slab
    found = find_points(template, points, partial, uae)
    error = np.linalg.norm(found.points_mm - truth, axis=1)
    inside, gone = outside_mm < 0, outside_mm > 10.0
    assert inside.sum() >= 15 and gone.sum() >= 5
    # Points in the field of view are found and come back; points whose anatomy lies more than 10 mm
    # outside cannot be found, and the round trip flags most of them (measured: 8 of 9).
    assert found.reliable[inside].mean() >= 0.9 and np.median(error[inside]) < 2.5
    assert found.reliable[gone].mean() <= 0.25
    assert error[gone].min() > 5.0


def test_register_with_uae_features_recovers_a_motion(template):
    from crossreg.register import register
    from crossreg.synth.geometry import move, random_rigid

    truth = random_rigid(3, 10.0, 10.0, center_mm=template.grid.center_mm(), seed=4)
    moving = move(template, truth)
    result = register(template, moving, RegisterConfig(features="uae", refine=None))
    points = template.grid.index_to_world(np.array([[20.0, 30, 30], [60, 60, 40], [40, 80, 50]]))
    assert np.abs(result.transform.apply(points) - truth.apply(points)).max() < 1.5


def test_uae_features_refuse_2d_images():
    with pytest.raises(CrossregError, match="3D but the images are 2D"):
        make_features(RegisterConfig(features="uae"), 2)
