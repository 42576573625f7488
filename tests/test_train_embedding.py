"""Training the anatomical embeddings: pairs show the same anatomy, the loss rewards the right matches,
and a run resumes exactly."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from crossreg import datasets
from crossreg.features.crosskey import network_input
from crossreg.features.uae import EmbeddingConfig
from crossreg.resample import working_image
from crossreg.synth.labels import head_labels
from crossreg.synth.subjects import SubjectConfig, make_subject
from crossreg.train.embedding import (
    EmbeddingTrainConfig,
    PoolConfig,
    View,
    _crop,
    sample_correspondences,
    train_embedding,
)
from crossreg.train.embedding_loss import EmbeddingLossConfig, embedding_loss, spherical_kmeans

TINY = EmbeddingConfig(channels=(4, 8, 8), semantic_level=1, semantic_dim=6, local_dim=6, mind_input=False)


@pytest.fixture(scope="module")
def two_t1_subjects():
    t1 = datasets.mni152_t1(2)
    labels = head_labels(t1, datasets.mni152_tissues())
    config = SubjectConfig(contrast="t1", spacing_mm=2.0)
    return [make_subject(t1, labels, config, seed=s) for s in (3, 4)]


def _view(subject, swap: bool = False) -> View:
    work = working_image(subject.image, 2.0)
    d = subject.deformation
    to_template, to_view = (
        (d.subject_points, d.template_points) if swap else (d.template_points, d.subject_points)
    )
    mask = torch.from_numpy(work.valid_mask())
    return View(network_input(work, TINY)[0], mask, work, to_template, to_view)


def _intensity_correlation(a: View, b: View) -> float:
    whole = PoolConfig(crop_fraction=(1.0, 1.0))
    generator = torch.Generator().manual_seed(0)
    crop_a, crop_b = _crop(a, whole, generator), _crop(b, whole, generator)
    points = sample_correspondences(crop_a, crop_b, 500, generator)
    assert points is not None and len(points.a_index) >= 200

    def intensity(view: View, index_xyz: torch.Tensor) -> np.ndarray:
        i = index_xyz.round().long().numpy()[:, ::-1]
        return view.inputs[0].numpy()[tuple(i.T)]

    return float(np.corrcoef(intensity(a, points.a_index), intensity(b, points.b_index))[0, 1])


def test_training_pairs_show_the_same_anatomy(two_t1_subjects):
    a, b = (_view(s) for s in two_t1_subjects)
    # Two T1-contrast subjects of other shapes: the same tissue at the paired points.
    assert _intensity_correlation(a, b) > 0.8
    # The maps inverted (subject <-> template swapped): the pairing is wrong and the check fails.
    assert (
        _intensity_correlation(_view(two_t1_subjects[0], swap=True), _view(two_t1_subjects[1], swap=True))
        < 0.6
    )


def test_loss_rewards_the_right_matches_and_reports_them():
    generator = torch.Generator().manual_seed(0)
    n = 64
    world = torch.rand(n, 3, generator=generator) * 100.0
    sem = torch.nn.functional.normalize(torch.randn(n, 8, generator=generator), dim=1)
    loc = torch.nn.functional.normalize(torch.randn(n, 8, generator=generator), dim=1)
    near = torch.nn.functional.normalize(torch.randn(n, 4, 8, generator=generator), dim=1)
    config = EmbeddingLossConfig(near=4)
    right, stats = embedding_loss(sem, loc, sem, loc, near, world, config, generator)
    shuffled = torch.randperm(n, generator=generator)
    wrong, wrong_stats = embedding_loss(
        sem, loc, sem[shuffled], loc[shuffled], near, world, config, generator
    )
    assert float(right) < 0.5 * float(wrong)
    assert stats["top1_2mm"] == 1.0 and wrong_stats["top1_2mm"] < 0.2


def test_spherical_kmeans_finds_separated_clusters():
    generator = torch.Generator().manual_seed(1)
    centres = torch.eye(4)
    x = torch.nn.functional.normalize(
        centres.repeat(25, 1) + 0.05 * torch.randn(100, 4, generator=generator), dim=1
    )
    found = spherical_kmeans(x, 4, 10, generator)
    assert ((found @ centres.T).max(dim=0).values > 0.99).all()


def test_a_run_resumes_exactly_and_learns_nothing_without_steps(tmp_path):
    config = EmbeddingTrainConfig(
        steps=3,
        pairs_per_step=1,
        log_every=1,
        checkpoint_every=1,
        network=TINY,
        pool=PoolConfig(
            subjects=2, template_copies=1, refresh_every=2, spacing_mm=8.0, points=64, min_crop_vox=6
        ),
    )

    def keep_step_2(entry):
        if entry.step == 2:
            shutil.copy(tmp_path / "a.ckpt", tmp_path / "b.ckpt")

    straight = train_embedding(tmp_path / "a.pt", config, on_step=keep_step_2)
    resumed = train_embedding(tmp_path / "b.pt", config, resume=True)
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    untrained = train_embedding(tmp_path / "c.pt", replace(config, steps=0))
    assert not torch.allclose(
        torch.nn.utils.parameters_to_vector(untrained.parameters()),
        torch.nn.utils.parameters_to_vector(straight.parameters()),
    )
    assert len((tmp_path / "a.log.jsonl").read_text().splitlines()) == 3
