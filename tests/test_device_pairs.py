"""Training pairs made on the training device: right correspondences, shared MRI inputs, the loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crossreg import datasets
from crossreg.features.crosskey import CrossKeyConfig
from crossreg.keypoints import KeypointConfig
from crossreg.resample import grid_points_mm, sample_world
from crossreg.synth.geometry import resample_anisotropic
from crossreg.train.data import PairConfig
from crossreg.train.device_pairs import (
    TISSUES,
    DevicePairConfig,
    DevicePairStream,
    make_anatomy,
    make_cone,
    prepare_source,
)
from crossreg.train.loop import TrainConfig, train

# 4 mm voxels keep a CPU test fast; the recipe is the 2 mm one's, scaled.
KEYPOINTS = KeypointConfig(
    sampling="probabilistic",
    scales_mm=(4.0, 6.0),
    nms_radius_mm=4.0,
    border_mm=8.0,
    max_keypoints=64,
    min_keypoints=0,
)
PAIRS = PairConfig(working_spacing_mm=4.0, n_uniform=64, n_bank=256, keypoints=KEYPOINTS, max_angle_deg=40.0)
NET = CrossKeyConfig(channels=(4, 8), hidden=16, out_dim=8)


@pytest.fixture(scope="module")
def source():
    return resample_anisotropic(datasets.mni152_t1(2), (4.0, 4.0, 4.0)), datasets.mni152_tissues(2)


def _read(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``volume`` ``(*S)`` at grid_sample coordinates ``(N, 3)``."""
    where = coords.reshape(1, -1, 1, 1, 3).to(volume.dtype)
    return torch.nn.functional.grid_sample(volume[None, None], where, align_corners=True).reshape(-1)


@pytest.mark.parametrize("subject_share", [0.0, 1.0])
def test_pair_points_show_the_same_tissue_on_both_sides(source, subject_share):
    """A pair's moving and fixed coordinates read the same tissue; the anatomy is the source's tissue
    carried by its map; the ultrasound shows echoes where there is brain and none where there is not."""
    config = DevicePairConfig(subject_share=subject_share)
    prepared = prepare_source(source, torch.device("cpu"))
    anatomy = make_anatomy(prepared, PAIRS, config, NET, np.random.default_rng(3))
    pair, grid = make_cone(anatomy, prepared, PAIRS, config, NET, 10_000, np.random.default_rng(4))
    wm = anatomy.fractions["wm"]
    on_cone = sample_world(wm[None], anatomy.grid, grid_points_mm(grid))[0]
    moving_side, fixed_side = _read(on_cone, pair.moving_coords), _read(wm, pair.fixed_coords)
    assert len(fixed_side) >= 16
    assert np.corrcoef(moving_side, fixed_side)[0, 1] > 0.9
    assert float((moving_side - fixed_side).abs().mean()) < 0.1
    back = anatomy.to_source(pair.positions_mm.double()).float()
    in_source = sample_world(prepared.fractions[2:3], prepared.grid, back)[0]
    assert np.corrcoef(in_source, fixed_side)[0, 1] > 0.9
    brain = sum(
        sample_world(anatomy.fractions[k][None], anatomy.grid, grid_points_mm(grid))[0] for k in TISSUES
    )
    image, mask = pair.moving_input[0, 0], pair.moving_input[0, 1] > 0
    outside = brain < 0.05  # in the cone's box, beyond the brain (the probe sits on its surface)
    assert int(outside.sum()) > 20
    assert float(image[outside].mean()) < 0.1 * float(image[mask & (brain > 0.5)].mean())


def test_pairs_of_one_anatomy_share_its_mri_input_and_training_runs(source, tmp_path):
    """Consecutive pairs of one anatomy share the MRI side's tensor, a new anatomy brings a new one; a
    short device-synthesis run trains and logs, and makes the same pairs in 2 spawned workers as in
    the training process (the same losses)."""
    config = DevicePairConfig(cones_per_anatomy=2, subject_share=0.5)
    chunks = iter(DevicePairStream([source], PAIRS, config, NET, seed=0))
    (a, b), (c, _) = next(chunks), next(chunks)
    assert a.fixed_input is b.fixed_input and c.fixed_input is not a.fixed_input
    assert not torch.equal(a.moving_coords, b.moving_coords)
    losses = []
    for workers in (0, 2):
        run = TrainConfig(
            steps=2,
            pairs_per_step=2,
            log_every=1,
            network=NET,
            pairs=PAIRS,
            synthesis="device",
            device_pairs=config,
            workers=workers,
        )
        out = tmp_path / f"m{workers}.pt"
        net = train([source], out, run)
        log = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
        assert [e["step"] for e in log] == [1, 2] and out.exists() and net.config == NET
        losses.append([e["loss"] for e in log])
    assert all(np.isfinite(losses[0])) and losses[0] == pytest.approx(losses[1], rel=1e-5)
