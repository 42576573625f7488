"""Training universal anatomical embeddings on synthetic subjects (``crossreg train embedding``).

A pool of views lives on the training device: synthetic subjects of the template
(:mod:`crossreg.synth.subjects`: other head shapes, random contrasts) and randomly re-contrasted copies
of the template itself, every one with exact world maps to the template. A training pair is two views
of different subjects, each cut to a random box (partial fields of view); points sampled in the first
are carried through the template into the second, so every pair has dense ground truth across people,
contrasts and fields of view. The pool is refreshed slot by slot as training runs, so a run sees many
more subjects than the pool holds.

The loss (:mod:`crossreg.train.embedding_loss`): pixel-level InfoNCE on the local embedding with hard
negatives a few mm from the true match, InfoNCE on the semantic embedding with only far points as
negatives, and a prototypical term that pulls both views of a point to the same cluster prototype.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from crossreg.datasets import mni152_t1, mni152_tissues
from crossreg.features.crosskey import network_input
from crossreg.features.mind import mind_maps
from crossreg.features.uae import (
    EmbeddingConfig,
    EmbeddingNet,
    embed_tensor,
    load_embedding_model,
    read_map,
    save_embedding_model,
)
from crossreg.image import Image
from crossreg.resample import working_image
from crossreg.synth.diffeo import Family
from crossreg.synth.labels import head_labels
from crossreg.synth.modality import add_noise, bias_field, random_lut
from crossreg.synth.subjects import AppearanceConfig, SubjectConfig, make_subject
from crossreg.train.checkpoints import cosine_lr, load_checkpoint, save_checkpoint
from crossreg.train.embedding_loss import EmbeddingLossConfig, embedding_loss

log = logging.getLogger(__name__)

#: Deformation families trained on; ``regional`` is held out for evaluation.
TRAIN_FAMILIES: tuple[Family, ...] = ("global", "atrophy")


@dataclass(frozen=True)
class PoolConfig:
    """The views training pairs are cut from."""

    subjects: int = 48  # synthetic subjects in the pool at any time (>= 2)
    template_copies: int = 4  # re-contrasted copies of the template in the pool (0: the template unused)
    refresh_every: int = 10  # steps between replacing one slot's subject by a new one (0: never)
    spacing_mm: float = 2.0  # working grid spacing of every view, mm
    families: tuple[Family, ...] = TRAIN_FAMILIES
    crop_fraction: tuple[float, float] = (0.45, 1.0)  # share of each axis a view's random box keeps
    min_crop_vox: int = 24  # a box keeps at least this many voxels per axis
    points: int = 768  # corresponding points sampled per pair
    template_share: float = 0.3  # probability that a pair's first view is a template copy

    def __post_init__(self) -> None:
        if (
            self.subjects < 2
            or self.points < 16
            or not 0 < self.crop_fraction[0] <= self.crop_fraction[1] <= 1
        ):
            raise ValueError(f"invalid PoolConfig {self}")


@dataclass(frozen=True)
class EmbeddingTrainConfig:
    """Settings of :func:`train_embedding`."""

    steps: int = 3200  # optimiser steps (the shipped model's)
    pairs_per_step: int = 4  # pairs per step; their losses are averaged
    lr: float = 1e-3  # AdamW peak learning rate (cosine down to 0.05 x)
    weight_decay: float = 1e-4
    seed: int = 0  # seeds the network, the pool and every draw
    log_every: int = 10  # steps between log lines (and the last step)
    checkpoint_every: int = 100  # steps between checkpoints (and the last step)
    network: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    loss: EmbeddingLossConfig = field(default_factory=EmbeddingLossConfig)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.pairs_per_step < 1:
            raise ValueError(f"invalid EmbeddingTrainConfig {self}")


@dataclass(frozen=True, eq=False)
class View:
    """One image of the pool on the device: network input ``(C, *S)`` (x, y, z index order reversed,
    as torch), field-of-view mask ``(*S)``, its working grid and its world maps to the template."""

    inputs: torch.Tensor
    mask: torch.Tensor
    image: Image
    to_template: Callable[[torch.Tensor], torch.Tensor]
    to_view: Callable[[torch.Tensor], torch.Tensor]


def _identity(points: torch.Tensor) -> torch.Tensor:
    return points


class ViewPool:
    """Slots of views; slot ``k`` is rebuilt from a new seed each time its turn to be refreshed comes."""

    def __init__(self, config: PoolConfig, network: EmbeddingConfig, seed: int, device: torch.device) -> None:
        self.config, self.network, self.seed, self.device = config, network, seed, device
        self.template = working_image(mni152_t1(2), config.spacing_mm)
        self.labels = head_labels(mni152_t1(2), mni152_tissues())
        self.subject_config = SubjectConfig(
            families=config.families,
            spacing_mm=config.spacing_mm,
            appearance=AppearanceConfig(
                slice_mm=(1.0, 5.0), noise_sigma=(0.0, 0.05), bias_strength=(0.0, 0.4)
            ),
        )
        self.slots: list[View] = []
        self.made: list[int] = []  # how many subjects each slot has held so far

    def at_step(self, step: int) -> None:
        """Bring every slot to the subject it holds at ``step`` (a resumed run rebuilds the same pool)."""
        every = self.config.refresh_every
        turns = step // every if every else 0
        n = self.config.subjects
        wanted = [1 + turns // n + (1 if k < turns % n else 0) for k in range(n)]
        if not self.slots:
            self.slots = [self._template_view(c) for c in range(self.config.template_copies)]
            self.slots += [self._subject_view(k, wanted[k] - 1) for k in range(n)]
            self.made = wanted
            return
        for k in range(n):
            if wanted[k] != self.made[k]:
                self.slots[self.config.template_copies + k] = self._subject_view(k, wanted[k] - 1)
                self.made[k] = wanted[k]

    def _view(self, work: Image, to_template, to_view) -> View:
        inputs = network_input(work, self.network, mind_maps(work) if self.network.mind_input else None)[0]
        mask = torch.from_numpy(work.valid_mask())
        return View(inputs.to(self.device), mask.to(self.device), work, to_template, to_view)

    def _template_view(self, copy: int) -> View:
        """The template itself (copy 0) or re-contrasted: a random non-monotonic intensity map, bias
        and noise."""
        work = self.template
        if copy > 0:
            rng = np.random.default_rng([self.seed, 7, copy])
            work = random_lut(work, int(rng.integers(2**31)))
            work = bias_field(work, float(rng.uniform(0, 0.4)), int(rng.integers(2**31)))
            work = add_noise(work, float(rng.uniform(0, 0.04)), int(rng.integers(2**31)))
            work = working_image(work, self.config.spacing_mm)
        return self._view(work, _identity, _identity)

    def _subject_view(self, slot: int, generation: int) -> View:
        seed = int(np.random.default_rng([self.seed, slot, generation]).integers(2**31))
        subject = make_subject(mni152_t1(2), self.labels, self.subject_config, seed, self.device)
        work = working_image(subject.image, self.config.spacing_mm)
        deformation = subject.deformation
        return self._view(work, deformation.template_points, deformation.subject_points)

    def subject_slots(self) -> range:
        """Indices of the synthetic subjects among the slots."""
        return range(self.config.template_copies, len(self.slots))


@dataclass(frozen=True, eq=False)
class Crop:
    """A view cut to a box: its input ``(1, C, *s)`` and the box's first index (torch order)."""

    view: View
    inputs: torch.Tensor
    start: torch.Tensor  # (d,) torch order
    size: torch.Tensor  # (d,) torch order


def _crop(view: View, config: PoolConfig, generator: torch.Generator) -> Crop:
    shape = torch.tensor(view.mask.shape)
    low, high = config.crop_fraction
    frac = low + (high - low) * torch.rand(len(shape), generator=generator)
    size = torch.minimum(torch.maximum((frac * shape).long(), torch.tensor(config.min_crop_vox)), shape)
    start = ((shape - size + 1).float() * torch.rand(len(shape), generator=generator)).long()
    box = tuple(slice(int(a), int(a + s)) for a, s in zip(start, size, strict=True))
    return Crop(view, view.inputs[(slice(None), *box)][None], start, size)


def _inside(crop: Crop, index_zyx: torch.Tensor) -> torch.Tensor:
    """Bool ``(N,)``: indices (torch order, float) inside the crop's box and the view's mask."""
    start, size = crop.start.to(index_zyx), crop.size.to(index_zyx)
    inside = ((index_zyx >= start) & (index_zyx <= start + size - 1)).all(dim=1)
    shape = torch.tensor(crop.view.mask.shape, device=index_zyx.device)
    nearest = torch.minimum(index_zyx.round().long().clamp(min=0), shape - 1)
    return inside & crop.view.mask[tuple(nearest.T)]


def _world(image: Image, index_zyx: torch.Tensor) -> torch.Tensor:
    matrix = torch.from_numpy(image.grid.index_to_world_matrix()).to(index_zyx)
    xyz = index_zyx.flip(-1)
    return xyz @ matrix[:-1, :-1].T + matrix[:-1, -1]


def _index(image: Image, world: torch.Tensor) -> torch.Tensor:
    matrix = torch.from_numpy(np.linalg.inv(image.grid.index_to_world_matrix())).to(world)
    return (world @ matrix[:-1, :-1].T + matrix[:-1, -1]).flip(-1)


@dataclass(frozen=True, eq=False)
class PairPoints:
    """Corresponding points of two crops: indices inside each crop (x, y, z order, float) and the
    second view's world points (mm), for distances."""

    a_index: torch.Tensor
    b_index: torch.Tensor
    b_world: torch.Tensor


def sample_correspondences(a: Crop, b: Crop, n: int, generator: torch.Generator) -> PairPoints | None:
    """Up to ``n`` random points of crop ``a``'s field of view with their exact match in crop ``b``
    (None when fewer than 16 land inside ``b``)."""
    device = a.inputs.device
    candidates = torch.nonzero(
        a.view.mask[tuple(slice(int(s), int(s + z)) for s, z in zip(a.start, a.size, strict=True))]
    )
    if len(candidates) < 16:
        return None
    pick = torch.randint(len(candidates), (3 * n,), generator=generator).to(device)
    jitter = torch.rand(3 * n, candidates.shape[1], generator=generator).to(device) - 0.5
    a_zyx = candidates[pick].float() + a.start.to(device) + jitter
    b_world = b.view.to_view(a.view.to_template(_world(a.view.image, a_zyx)))
    b_zyx = _index(b.view.image, b_world)
    keep = _inside(b, b_zyx) & _inside(a, a_zyx)
    if int(keep.sum()) < 16:
        return None
    keep = torch.nonzero(keep)[:n, 0]
    a_index = (a_zyx[keep] - a.start.to(device)).flip(-1)
    b_index = (b_zyx[keep] - b.start.to(device)).flip(-1)
    return PairPoints(a_index, b_index, b_world[keep].float())


def _pair(pool: ViewPool, config: EmbeddingTrainConfig, generator: torch.Generator):
    """Two crops of different views and their correspondences (redrawn until enough overlap)."""
    subjects = list(pool.subject_slots())
    while True:
        first_template = (
            pool.config.template_copies and torch.rand(1, generator=generator) < pool.config.template_share
        )
        if first_template:
            ia = int(torch.randint(pool.config.template_copies, (1,), generator=generator))
        else:
            ia = subjects[int(torch.randint(len(subjects), (1,), generator=generator))]
        ib = ia
        while ib == ia:
            ib = subjects[int(torch.randint(len(subjects), (1,), generator=generator))]
        a, b = (_crop(pool.slots[i], config.pool, generator) for i in (ia, ib))
        points = sample_correspondences(a, b, config.pool.points, generator)
        if points is not None:
            return a, b, points


def pair_loss(
    net: EmbeddingNet,
    a: Crop,
    b: Crop,
    points: PairPoints,
    config: EmbeddingTrainConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one pair of crops and its statistics."""
    sem_a, loc_a = embed_tensor(net, a.inputs)
    sem_b, loc_b = embed_tensor(net, b.inputs)
    stride = 2**net.config.semantic_level
    spacing = float(b.view.image.spacing_mm[0])
    offsets = _near_offsets(len(points.b_index), config.loss, spacing, generator).to(points.b_index)
    near = (points.b_index[:, None, :] + offsets).clamp(min=0)
    near = torch.minimum(near, (b.size.flip(0) - 1).to(near))
    return embedding_loss(
        read_map(sem_a, points.a_index, stride),
        read_map(loc_a, points.a_index, 1),
        read_map(sem_b, points.b_index, stride),
        read_map(loc_b, points.b_index, 1),
        read_map(loc_b, near.reshape(-1, near.shape[-1]), 1).reshape(*near.shape[:2], -1),
        points.b_world,
        config.loss,
        generator,
    )


def _near_offsets(
    n: int, config: EmbeddingLossConfig, spacing_mm: float, generator: torch.Generator
) -> torch.Tensor:
    """``(n, near, 3)`` voxel offsets of hard negatives: random directions, ``near_mm`` away."""
    direction = torch.nn.functional.normalize(torch.randn(n, config.near, 3, generator=generator), dim=-1)
    low, high = config.near_mm
    radius = low + (high - low) * torch.rand(n, config.near, 1, generator=generator)
    return direction * radius / spacing_mm


@dataclass(frozen=True)
class EmbeddingStepLog:
    """What one logged step measured."""

    step: int
    loss: float
    stats: dict[str, float]
    lr: float
    seconds: float


def train_embedding(
    out: str | Path,
    config: EmbeddingTrainConfig = EmbeddingTrainConfig(),
    device: str = "cpu",
    resume: bool = False,
    meta: dict | None = None,
    on_step: Callable[[EmbeddingStepLog], None] | None = None,
    stop_after_s: float | None = None,
    warm_start: str | Path | None = None,
) -> EmbeddingNet:
    """Train an embedding network on synthetic subjects of the shipped template; write it to ``out``
    (with ``meta`` and the config in its card data), ``out``.ckpt and ``out``.log.jsonl.

    ``stop_after_s``: stop (checkpointed, the model written as it is) once this many seconds have
    passed; ``resume`` continues the same schedule later, so a long run fits in short sessions.
    ``warm_start``: without a checkpoint, start from these weights at the step they were written at
    (with a fresh optimiser): a chunk can go on from the model file alone."""
    out = Path(out)
    torch.manual_seed(config.seed)
    dev = torch.device(device)
    net = EmbeddingNet(config.network).to(dev)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    checkpoint, log_path = out.with_suffix(".ckpt"), out.with_suffix(".log.jsonl")
    step = load_checkpoint(checkpoint, net, optimiser, generator) if resume else 0
    if warm_start is not None and step == 0:
        start, start_meta = load_embedding_model(warm_start, device)
        net.load_state_dict(start.state_dict())
        step = int(start_meta.get("steps", 0))
        log.info("warm start from %s at step %d (a fresh optimiser)", warm_start, step)
    if step == 0:
        log_path.unlink(missing_ok=True)
    pool = ViewPool(config.pool, config.network, config.seed, dev)
    clock = time.perf_counter()
    net.train()
    while step < config.steps and (stop_after_s is None or time.perf_counter() - clock < stop_after_s):
        pool.at_step(step)
        lr = cosine_lr(config.lr, step / max(config.steps - 1, 1))
        for group in optimiser.param_groups:
            group["lr"] = lr
        optimiser.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for _ in range(config.pairs_per_step):
            a, b, points = _pair(pool, config, generator)
            loss, stats = pair_loss(net, a, b, points, config, generator)
            (loss / config.pairs_per_step).backward()
            for k, v in {"loss": float(loss.detach()), **stats}.items():
                totals[k] = totals.get(k, 0.0) + v / config.pairs_per_step
        optimiser.step()
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            entry = EmbeddingStepLog(step, totals.pop("loss"), totals, lr, time.perf_counter() - clock)
            with log_path.open("a") as f:
                f.write(json.dumps(asdict(entry)) + "\n")
            if on_step is not None:
                on_step(entry)
        if step % config.checkpoint_every == 0 or step == config.steps:
            save_checkpoint(checkpoint, net, optimiser, generator, step)
    save_checkpoint(checkpoint, net, optimiser, generator, step)
    save_embedding_model(out, net, {**(meta or {}), "train_config": asdict(config), "steps": step})
    return net.eval()
