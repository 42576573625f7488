"""Training: pairs with exact correspondences, losses that rank the truth, a loop that resumes exactly."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from crossreg import datasets
from crossreg.features.crosskey import CrossKeyConfig, load_model, network_input
from crossreg.keypoints import KeypointConfig
from crossreg.resample import grid_coords, working_image
from crossreg.synth import cases
from crossreg.synth.geometry import extract_slice
from crossreg.train import data
from crossreg.train.data import PairConfig, make_pair
from crossreg.train.loop import TrainConfig, train
from crossreg.train.losses import LossConfig, bank_infonce, curriculum_infonce, curriculum_triplet


def axial_sources():
    """Two axial slices of the shipped 2 mm T1 with their tissue maps: 2D training sources."""
    t1, tissues = datasets.mni152_t1(2), datasets.mni152_tissues(2)
    return [
        (extract_slice(t1, "axial", i), {k: extract_slice(v, "axial", i) for k, v in tissues.items()})
        for i in (42, 46)
    ]


@pytest.fixture(scope="module")
def sources_2d():
    return axial_sources()


PAIRS_2D = PairConfig(
    working_spacing_mm=2.0,
    curriculum_pairs=8,
    n_uniform=32,
    keypoints=KeypointConfig(sampling="probabilistic", border_mm=4.0, max_keypoints=32, min_keypoints=0),
    n_bank=256,
)
NET_2D = CrossKeyConfig(ndim=2, channels=(4, 8), out_dim=8, hidden=16)


def test_pairs_are_reproducible_and_inside_both_images(sources_2d):
    a, b = (
        make_pair(sources_2d, PAIRS_2D, NET_2D, 5, seed=1),
        make_pair(sources_2d, PAIRS_2D, NET_2D, 5, seed=1),
    )
    assert torch.equal(a.moving_input, b.moving_input) and torch.equal(a.fixed_coords, b.fixed_coords)
    assert (
        len(a.fixed_coords) >= 20 and a.fixed_coords.abs().max() <= 1.0 and a.moving_coords.abs().max() <= 1.0
    )
    # Each point lies inside the ultrasound cone (its mask channel) and on the MRI's signal.
    mask = a.moving_input[0, 1]
    d = a.moving_coords.shape[1]
    where = a.moving_coords.reshape(1, -1, *[1] * (d - 1), d)
    inside = torch.nn.functional.grid_sample(mask[None, None], where, align_corners=True).flatten()
    assert (inside > 0.5).float().mean() > 0.95
    assert not torch.equal(a.moving_input, make_pair(sources_2d, PAIRS_2D, NET_2D, 6, seed=1).moving_input)


def test_pairs_carry_mind_channels_and_a_bank_over_the_mri(sources_2d):
    pair = make_pair(sources_2d, PAIRS_2D, NET_2D, 5, seed=1)
    assert pair.fixed_input.shape[1] == pair.moving_input.shape[1] == NET_2D.in_channels == 10
    mask = pair.moving_input[0, 1]
    assert pair.moving_input[0, 2:, mask == 0].abs().max() == 0  # MIND is zero outside the cone
    assert pair.moving_input[0, 2:, mask > 0].abs().max() > 0
    # The bank spreads over the MRI's signal, far beyond the cone's points.
    assert pair.bank_coords.abs().max() <= 1.0
    d = 2
    where = pair.bank_coords[:256].reshape(1, -1, *[1] * (d - 1), d)
    fixed_mask = pair.fixed_input[0, 1]
    inside = torch.nn.functional.grid_sample(fixed_mask[None, None], where, align_corners=True).flatten()
    assert (inside > 0.5).float().mean() > 0.95
    spread = pair.bank_mm[:256].std(dim=0).min()
    assert spread > 2 * pair.positions_mm.std(dim=0).min()
    # Then the near negatives: n_near per point (all but those off the grid), each 3-10 mm from it.
    near = pair.bank_mm[256:]
    drawn = PAIRS_2D.n_near * len(pair.positions_mm)
    assert 0.9 * drawn <= len(near) <= drawn
    distance = torch.cdist(near, pair.positions_mm)
    low, high = PAIRS_2D.near_mm
    assert distance.min(dim=1).values.max() <= high + 1e-3
    # Each lies in the 3-10 mm shell of some point (its own), not merely near the cone.
    assert ((distance >= low - 1e-3) & (distance <= high + 1e-3)).any(dim=1).all()
    # The MRI side, computed once per process for unwarped T1 sources, is what a fresh computation gives.
    fresh = [network_input(working_image(image, 2.0), NET_2D) for image, _ in sources_2d]
    assert any(torch.equal(pair.fixed_input, f) for f in fresh)


def _mri_as_moving(monkeypatch) -> list[cases.Case]:
    """Make training pairs whose moving side is the MRI itself, noise-free, under the pair's own motion
    (the case kind ``same`` in place of the ultrasound); gives the list the cases made are added to."""
    made: list[cases.Case] = []

    def same_case(image, kind, angle_deg, translation_mm, **kwargs):
        case = cases.make_case(image, "same", angle_deg, translation_mm, corruption=None, **kwargs)
        made.append(case)
        return case

    monkeypatch.setattr(data, "make_case", same_case)
    return made


def _sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``(C, N)`` values of network inputs ``(1, C, *S)`` at grid_sample coordinates ``(N, d)``."""
    d = coords.shape[1]
    where = coords.reshape(1, -1, *[1] * (d - 1), d)
    return torch.nn.functional.grid_sample(inputs, where, align_corners=True).reshape(inputs.shape[1], -1)


def test_pair_points_show_the_same_anatomy_on_both_sides(sources_2d, monkeypatch):
    # With the MRI as the moving image, both sides of a correspondence must show the same intensity.
    # Measured: r = 0.999, mean |difference| 0.007 (intensities normalised to 0..1). The transform
    # inverted in make_pair: r = -0.17, 0.29; fixed and moving coordinates swapped: r = -0.19, 0.51;
    # either side's coordinates scaled by 0.9: r = 0.88, 0.06.
    made = _mri_as_moving(monkeypatch)
    pair = make_pair(sources_2d, PAIRS_2D, NET_2D, 9, seed=0)  # past the rotation curriculum
    truth = made[-1].true_transform
    positions_mm = pair.positions_mm.double().numpy()
    assert abs(np.degrees(np.arctan2(truth.matrix[1, 0], truth.matrix[0, 0]))) > 25.0
    moved_mm = np.linalg.norm(truth.apply(positions_mm) - positions_mm, axis=1)
    assert np.median(moved_mm) > 20.0  # so an inverted motion misplaces points by tens of mm
    fixed_values = _sample(pair.fixed_input, pair.fixed_coords)
    moving_values = _sample(pair.moving_input, pair.moving_coords)
    r = np.corrcoef(fixed_values[0].numpy(), moving_values[0].numpy())[0, 1]
    assert r > 0.95 and (fixed_values[0] - moving_values[0]).abs().mean() < 0.02
    assert len(positions_mm) >= 40 and fixed_values[1].min() > 0.99 and moving_values[1].min() > 0.99
    # positions_mm are the MRI world points of fixed_coords, which the truth takes to moving_coords.
    fixed_grid = working_image(made[-1].fixed, PAIRS_2D.working_spacing_mm).grid
    moving_grid = working_image(made[-1].moving, PAIRS_2D.working_spacing_mm).grid
    np.testing.assert_allclose(pair.fixed_coords, grid_coords(fixed_grid, positions_mm), atol=1e-5)
    np.testing.assert_allclose(
        pair.moving_coords, grid_coords(moving_grid, truth.apply(positions_mm)), atol=1e-5
    )


def test_losses_rank_the_true_partner():
    g = torch.Generator().manual_seed(0)
    positions = torch.rand(64, 3, generator=g) * 100.0
    random = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=1)
    noisy = torch.nn.functional.normalize(random + 0.05 * torch.randn(64, 16, generator=g), dim=1)
    for hardness in (0.0, 1.0):
        good, stats = curriculum_infonce(random, noisy, positions, hardness)
        bad, _ = curriculum_infonce(random, noisy.roll(1, 0), positions, hardness)
        assert good < bad and stats["accuracy"] == 1.0
        t_good, _ = curriculum_triplet(random, noisy, positions, hardness, LossConfig(kind="triplet"), g)
        t_bad, _ = curriculum_triplet(
            random, noisy.roll(1, 0), positions, hardness, LossConfig(kind="triplet"), g
        )
        assert t_good < t_bad
        bank = torch.nn.functional.normalize(torch.randn(128, 16, generator=g), dim=1)
        bank_mm = torch.rand(128, 3, generator=g) * 100.0
        b_good, b_stats = bank_infonce(random, noisy, positions, bank, bank_mm, hardness)
        b_bad, _ = bank_infonce(random, noisy.roll(1, 0), positions, bank, bank_mm, hardness)
        assert b_good < b_bad and b_stats["accuracy"] == 1.0 and b_stats["within_3mm"] == 1.0
        # A bank descriptor equal to the query, far from its partner, is a negative that must cost.
        decoy = bank.clone()
        decoy[:64] = noisy
        b_decoy, _ = bank_infonce(random, noisy, positions, decoy, bank_mm + 500.0, hardness)
        assert b_decoy > b_good + 0.5


def test_resume_continues_exactly(sources_2d, tmp_path):
    config = TrainConfig(
        steps=4,
        pairs_per_step=2,
        log_every=1,
        checkpoint_every=2,
        network=NET_2D,
        pairs=PAIRS_2D,
    )
    import shutil

    def keep_step_2_checkpoint(entry):  # logged before the step's own checkpoint: a.ckpt is step 2's
        if entry.step == 3:
            shutil.copy(tmp_path / "a.ckpt", tmp_path / "c.ckpt")

    straight = train(sources_2d, tmp_path / "a.pt", config, on_step=keep_step_2_checkpoint)
    assert torch.load(tmp_path / "c.ckpt", weights_only=True)["step"] == 2
    resumed = train(sources_2d, tmp_path / "c.pt", config, resume=True)
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    logged = [line for line in (tmp_path / "a.log.jsonl").read_text().splitlines() if line]
    assert len(logged) == 4
    net, meta = load_model(tmp_path / "a.pt")
    assert meta["steps"] == 4 and net.config.ndim == 2
    untrained = torch.nn.utils.parameters_to_vector(
        train(sources_2d, tmp_path / "z.pt", replace(config, steps=0)).parameters()
    )
    assert not torch.allclose(untrained, torch.nn.utils.parameters_to_vector(straight.parameters()))


def test_a_short_training_run_learns(sources_2d, tmp_path, monkeypatch):
    # Ultrasound descriptors take thousands of steps (measured: 200-400 steps of these pairs lower the
    # loss by 0.2-0.6 and take top-1 from 0.01-0.02 to only 0.03-0.06), so this run learns the MRI
    # against itself under the pairs' motion: all else (pairs, curriculum, bank loss, schedule) is as
    # training runs it.
    # Measured over seeds 0-4 (first 15 steps -> last 15): loss 4.6-5.5 -> 3.4-4.3 (falls >= 1.1),
    # top-1 0.08-0.16 -> 0.25-0.39 (rises >= 0.10); inverted correspondences do not learn.
    _mri_as_moving(monkeypatch)
    config = TrainConfig(steps=100, pairs_per_step=1, log_every=1, network=NET_2D, pairs=PAIRS_2D)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the numbers of 2 threads to 1e-5, and 5x faster on a busy machine
    try:
        train(sources_2d, tmp_path / "a.pt", config)
    finally:
        torch.set_num_threads(threads)
    logged = [json.loads(line) for line in (tmp_path / "a.log.jsonl").read_text().splitlines()]
    loss = np.array([entry["loss"] for entry in logged])
    top1 = np.array([entry["stats"]["accuracy"] for entry in logged])
    assert len(logged) == 100
    assert loss[-15:].mean() < loss[:15].mean() - 0.5
    assert top1[-15:].mean() > top1[:15].mean() + 0.05


def test_echo_reuses_each_batch_and_resumes_inside_a_batch(sources_2d, tmp_path, monkeypatch):
    import importlib
    import shutil

    data = importlib.import_module("crossreg.train.data")
    made: list[int] = []
    real_make_pair = data.make_pair

    def counting_make_pair(sources, config, network, index, seed=0):
        made.append(index)
        return real_make_pair(sources, config, network, index, seed)

    monkeypatch.setattr(data, "make_pair", counting_make_pair)
    config = TrainConfig(
        steps=4, pairs_per_step=2, echo=2, log_every=1, checkpoint_every=1, network=NET_2D, pairs=PAIRS_2D
    )

    def keep_step_3_checkpoint(entry):  # step 3 is the second step of the second batch
        if entry.step == 4:
            shutil.copy(tmp_path / "a.ckpt", tmp_path / "c.ckpt")

    straight = train(sources_2d, tmp_path / "a.pt", config, on_step=keep_step_3_checkpoint)
    assert made == [0, 1, 2, 3]  # 4 steps x 2 pairs, each batch used twice: 4 distinct pairs
    made.clear()
    resumed = train(sources_2d, tmp_path / "c.pt", config, resume=True)
    assert made == [2, 3]  # the resumed step re-makes the batch it was in
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="echo"):
        replace(config, echo=0)
    fresh = train(sources_2d, tmp_path / "f.pt", replace(config, echo=1))
    assert not torch.allclose(
        torch.nn.utils.parameters_to_vector(fresh.parameters()),
        torch.nn.utils.parameters_to_vector(straight.parameters()),
    )


_RANK = """
import sys
from dataclasses import replace
sys.path.insert(0, {tests!r})
from test_train import NET_2D, PAIRS_2D, axial_sources
from crossreg.train.loop import TrainConfig, train
pairs = replace(PAIRS_2D, curriculum_pairs=PAIRS_2D.curriculum_pairs // 2)  # per rank
config = TrainConfig(steps=3, pairs_per_step=2, log_every=1, network=NET_2D, pairs=pairs)
train(axial_sources(), {out!r}, config)
"""


def test_ddp_ranks_follow_one_process(sources_2d, tmp_path):
    # Two torchrun ranks of 2 pairs each see the 4 pairs one process sees per step, and DDP averages
    # their gradients: the loss curves (averaged over ranks) and the weights must agree.
    import subprocess
    import sys
    from pathlib import Path

    config = TrainConfig(steps=3, pairs_per_step=4, log_every=1, network=NET_2D, pairs=PAIRS_2D)
    single = train(sources_2d, tmp_path / "single.pt", config)
    script = tmp_path / "rank.py"
    script.write_text(_RANK.format(tests=str(Path(__file__).parent), out=str(tmp_path / "ddp.pt")))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run([*command, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    losses = [
        [json.loads(line)["loss"] for line in (tmp_path / f"{name}.log.jsonl").read_text().splitlines()]
        for name in ("single", "ddp")
    ]
    assert len(losses[0]) == len(losses[1]) == 3
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-3)
    ddp = torch.load(tmp_path / "ddp.ckpt", weights_only=True)["model"]
    start = train(sources_2d, tmp_path / "start.pt", replace(config, steps=0)).state_dict()
    moved = sum(float((v - start[k]).norm() ** 2) for k, v in single.state_dict().items()) ** 0.5
    apart = sum(float((v - ddp[k]).norm() ** 2) for k, v in single.state_dict().items()) ** 0.5
    # Measured: 1.7% of the distance travelled (summation order); half the pairs per step gives 80%.
    assert apart < 0.05 * moved
    # And it is not trivially equal: a run on other pairs ends elsewhere.
    other = train(sources_2d, tmp_path / "other.pt", replace(config, seed=1))
    assert not torch.allclose(
        torch.nn.utils.parameters_to_vector(other.parameters()),
        torch.nn.utils.parameters_to_vector(single.parameters()),
    )
