"""The one training loop for descriptor networks: CPU, one GPU, or several under ``torchrun`` (DDP).

Pairs come from :class:`crossreg.train.data.PairStream` (synthesised on CPU workers while the GPU
trains) or, with ``synthesis="device"``, from :class:`crossreg.train.device_pairs.DevicePairStream`
(made on the training device itself); each rank draws its own share of pair indices, so N ranks see
N times the pairs per step. CPU synthesis bounds the speed (docs/benchmarks.md), so a batch of pairs
may serve ``echo`` consecutive steps (data echoing; the negatives are drawn afresh each time). Pairs
that share their MRI side (device synthesis) run it through the network once per step.
A checkpoint (model, optimiser, step, loss generator) is written atomically every
``checkpoint_every`` steps and at the end; ``resume`` continues from it exactly. Losses go to a JSON
lines log. Rank 0 alone writes files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from crossreg.features.crosskey import CrossKeyConfig, DescriptorNet, save_model
from crossreg.train.checkpoints import cosine_lr, load_checkpoint, save_checkpoint
from crossreg.train.data import PairConfig, PairStream, Source, TrainingPair
from crossreg.train.device_pairs import DevicePairConfig, DevicePairStream
from crossreg.train.losses import LossConfig, descriptor_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train`: the schedule, the optimiser, and the network, pairs and loss it uses.

    Each rank sees steps x pairs_per_step pairs, steps x pairs_per_step / echo of them distinct.
    """

    steps: int = 600  # optimiser steps
    pairs_per_step: int = 8  # training pairs per step and rank (>= 1); their losses are averaged
    # Consecutive steps each batch of pairs serves (>= 1; 1: no data echoing). Synthesis, not the GPU,
    # bounds the speed, so echoing buys steps (docs/benchmarks.md).
    echo: int = 1
    lr: float = 2e-3  # AdamW peak learning rate; a cosine takes it down to 0.05 x lr at the last step
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    # Fraction (0-1) of the steps over which the negatives' hardness grows linearly from 0 to 1.
    hardness_warmup: float = 0.5
    workers: int = 0  # DataLoader processes synthesising pairs (0: in the training process)
    # Where pairs are made: "workers" (crossreg.train.data on the CPU) or "device" (crossreg.train.
    # device_pairs on the training device, with device_pairs' anatomies; `workers` spawned processes
    # each launch its kernels: a cone is ~1000 small kernels, so one process cannot keep a GPU busy).
    synthesis: Literal["workers", "device"] = "workers"
    device_pairs: DevicePairConfig = field(default_factory=DevicePairConfig)
    seed: int = 0  # seeds the network's initialisation, the pair stream and the loss's draws
    log_every: int = 10  # steps between log lines (and the last step)
    checkpoint_every: int = 100  # steps between checkpoints (and the last step)
    network: CrossKeyConfig = field(default_factory=CrossKeyConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if self.pairs_per_step < 1 or self.echo < 1 or self.synthesis not in ("workers", "device"):
            raise ValueError(
                f"TrainConfig needs pairs_per_step >= 1, echo >= 1, synthesis workers or device, got {self}"
            )

    def batch_start(self, step: int, world: int = 1) -> int:
        """Index of the first pair of step ``step``'s batch, over all ``world`` ranks."""
        return step // self.echo * self.pairs_per_step * world


@dataclass(frozen=True)
class StepLog:
    """What one logged step measured."""

    step: int
    loss: float
    stats: dict[str, float]
    hardness: float
    max_angle_deg: float
    lr: float
    seconds: float


def _distributed() -> tuple[int, int]:
    """(rank, world size), starting the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _pair_loss(
    net: torch.nn.Module,
    pair: TrainingPair,
    fixed_maps: list[torch.Tensor],
    hardness: float,
    config: TrainConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one pair whose tensors are on the network's device, given its MRI side's feature
    maps, and its statistics."""
    core = net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net
    moving_maps = net(pair.moving_input)
    desc_f = core.descriptors_at(fixed_maps, pair.fixed_coords)
    desc_m = core.descriptors_at(moving_maps, pair.moving_coords)
    bank = None
    if config.loss.kind == "bank":
        bank = (core.descriptors_at(fixed_maps, pair.bank_coords).float(), pair.bank_mm)
    return descriptor_loss(
        desc_f.float(), desc_m.float(), pair.positions_mm, hardness, config.loss, generator, bank
    )


def _by_mri(batch: list[TrainingPair]) -> list[list[TrainingPair]]:
    """``batch`` split into runs of consecutive pairs that share one MRI-side input tensor."""
    groups: list[list[TrainingPair]] = []
    for pair in batch:
        if groups and groups[-1][0].fixed_input is pair.fixed_input:
            groups[-1].append(pair)
        else:
            groups.append([pair])
    return groups


class _Encoder(torch.nn.Module):
    """``forward`` = feature maps, so DDP sees the encoder call (the head runs in ``descriptors_at``)."""

    def __init__(self, net: DescriptorNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net.feature_maps(x)

    def descriptors_at(self, maps: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        return self.net.descriptors_at(maps, coords)


def train(
    sources: Sequence[Source],
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    device: str = "cpu",
    resume: bool = False,
    meta: dict | None = None,
    on_step: Callable[[StepLog], None] | None = None,
) -> DescriptorNet:
    """Train a descriptor network on pairs synthesised from ``sources``; write it to ``out`` (with
    ``meta`` and the config in its card data), ``out``.ckpt and ``out``.log.jsonl. Gives the network."""
    out = Path(out)
    owns_group = not dist.is_initialized()
    rank, world = _distributed()
    torch.manual_seed(config.seed)
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if device == "cuda" else device)
    net = DescriptorNet(config.network).to(dev)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    checkpoint, log_path = out.with_suffix(".ckpt"), out.with_suffix(".log.jsonl")
    step = load_checkpoint(checkpoint, net, optimiser, generator) if resume else 0
    if rank == 0 and step == 0:
        log_path.unlink(missing_ok=True)
    model: torch.nn.Module = _Encoder(net)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    first = config.batch_start(step, world) + rank  # the batch this step uses (a resumed run's too)
    # Pair indices run over all ranks; the curriculum is set per rank, as the pairs per step are.
    pair_config = replace(config.pairs, curriculum_pairs=config.pairs.curriculum_pairs * world)
    pairs = _pair_source(sources, config, pair_config, first, world, dev)
    batch: list[TrainingPair] = []
    # Device pairs of one anatomy run their MRI side once. Not under DDP, which gives wrong gradients
    # for several forward passes before one backward, nor for CPU pairs, whose runs stay as they were.
    shared = config.synthesis == "device" and world == 1
    clock = time.perf_counter()
    while step < config.steps:
        progress = step / max(config.steps - 1, 1)
        hardness = min(step / max(config.hardness_warmup * config.steps, 1), 1.0)
        lr = cosine_lr(config.lr, progress)
        for group in optimiser.param_groups:
            group["lr"] = lr
        optimiser.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        if step % config.echo == 0 or not batch:  # a new batch, or the one a resumed run was in
            batch = [next(pairs).to(dev) for _ in range(config.pairs_per_step)]
        for group in _by_mri(batch) if shared else [[pair] for pair in batch]:
            fixed_maps = model(group[0].fixed_input)
            group_loss = torch.zeros((), device=dev)
            for pair in group:
                loss, stats = _pair_loss(model, pair, fixed_maps, hardness, config, generator)
                group_loss = group_loss + loss / config.pairs_per_step
                for k, v in {"loss": float(loss.detach()), **stats}.items():
                    totals[k] = totals.get(k, 0.0) + v / config.pairs_per_step
            group_loss.backward()
        optimiser.step()
        step += 1
        logging_step = step % config.log_every == 0 or step == config.steps
        if logging_step and world > 1:
            totals = _mean_over_ranks(totals, dev)
        if rank == 0 and logging_step:
            angle = pair_config.angle_deg(config.batch_start(step, world))
            loss_mean = totals.pop("loss")
            entry = StepLog(
                step,
                loss_mean,
                totals,
                hardness=hardness,
                max_angle_deg=angle,
                lr=lr,
                seconds=time.perf_counter() - clock,
            )
            with log_path.open("a") as f:
                f.write(json.dumps(asdict(entry)) + "\n")
            if on_step is not None:
                on_step(entry)
        if rank == 0 and (step % config.checkpoint_every == 0 or step == config.steps):
            save_checkpoint(checkpoint, net, optimiser, generator, step)
    batch.clear()  # pairs made in worker processes go before the workers do (CUDA tensors they share)
    pairs.close()
    if rank == 0:
        save_model(
            out, net, {**(meta or {}), "train_config": asdict(config), "steps": step, "world_size": world}
        )
    if world > 1:
        dist.barrier()
    if world > 1 and owns_group:
        # Without an orderly shutdown, gloo's threads can outlive the interpreter: the rank that exits
        # second then aborts ("terminate called without an active exception"), measured 1 in 100 runs.
        dist.destroy_process_group()
    return net.eval()


def _pair_source(
    sources: Sequence[Source],
    config: TrainConfig,
    pairs: PairConfig,
    first: int,
    world: int,
    device: torch.device,
) -> Generator[TrainingPair, None, None]:
    """The rank's pairs ``first, first + world, ...``: from ``config.workers`` CPU processes, or made on
    ``device`` (in ``config.workers`` spawned processes, each with its own CUDA context, if any)."""
    if config.synthesis == "workers":
        stream = PairStream(sources, pairs, config.network, config.seed, first, world)
        loader = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=config.workers, persistent_workers=config.workers > 0
        )
        return (pair for pair in loader)
    chunks = DevicePairStream(
        sources, pairs, config.device_pairs, config.network, config.seed, first, world, device
    )
    loader = torch.utils.data.DataLoader(
        chunks,
        batch_size=None,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        multiprocessing_context="spawn" if config.workers > 0 else None,
    )
    return _flatten(loader)


def _flatten(loader: torch.utils.data.DataLoader) -> Generator[TrainingPair, None, None]:
    """The pairs of ``loader``'s lists, one by one; closing it lets go of the last list before the
    loader's workers shut down."""
    chunks = iter(loader)
    chunk: list[TrainingPair] = []
    try:
        for chunk in chunks:
            yield from chunk
    finally:
        chunk.clear()
        del chunks


def _mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """``values`` averaged over the DDP ranks (every rank calls this at the same steps), so the log
    describes every pair of the step, as in a single-process run with ``world`` times the pairs."""
    keys = sorted(values)
    summed = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return dict(zip(keys, (summed / dist.get_world_size()).tolist(), strict=True))
