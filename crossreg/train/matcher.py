"""Training the 2D matcher on synthetic pairs (``crossreg train matcher``) and measuring it zero-shot.

Every step draws a fresh batch of pairs on the training device (:mod:`crossreg.matcher2d.pairs`):
crops of real images and procedural pictures, warped by a homography and an elastic field, each side
rendered by a modality family of the training split. The held-out families
(:data:`crossreg.matcher2d.families.HELD_OUT_FAMILIES`) are never drawn in training;
:func:`evaluate_matcher` measures matching on them (and on the training families) afterwards.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from crossreg.features.weights import save_weights
from crossreg.matcher2d.families import HELD_OUT_FAMILIES
from crossreg.matcher2d.match import KIND, Matcher2dConfig, find_matches, load_matcher
from crossreg.matcher2d.net import MatcherNet, MatcherNetConfig
from crossreg.matcher2d.pairs import PairConfig, SourcePool, make_pairs, read_at
from crossreg.matcher2d.sources import SourceConfig, source_pool
from crossreg.train.checkpoints import cosine_lr, load_checkpoint, save_checkpoint
from crossreg.train.matcher_loss import MatcherLossConfig, matcher_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatcherTrainConfig:
    """Settings of :func:`train_matcher`."""

    steps: int = 30000  # optimiser steps of the whole schedule
    batch: int = 16  # pairs per step
    lr: float = 1e-3  # AdamW peak learning rate (cosine down to 0.05 x)
    weight_decay: float = 1e-4
    seed: int = 0  # seeds the network and every pair
    log_every: int = 20  # steps between log lines (and the last step)
    checkpoint_every: int = 250  # steps between checkpoints (and the last step)
    network: MatcherNetConfig = field(default_factory=MatcherNetConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    sources: SourceConfig = field(default_factory=SourceConfig)
    loss: MatcherLossConfig = field(default_factory=MatcherLossConfig)
    matching: Matcher2dConfig = field(default_factory=Matcher2dConfig)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or not self.pairs.training:
            raise ValueError(f"invalid MatcherTrainConfig (pairs must be drawn in training mode): {self}")


@dataclass(frozen=True)
class MatcherStepLog:
    """What one logged step measured."""

    step: int
    loss: float
    stats: dict[str, float]
    lr: float
    seconds: float


def _start(out: Path, net: MatcherNet, optimiser, generator, resume: bool, warm_start, device) -> int:
    """The step training starts at: the checkpoint's (resume), the warm-start model's, or 0."""
    step = load_checkpoint(out.with_suffix(".ckpt"), net, optimiser, generator) if resume else 0
    if warm_start is not None and step == 0:
        start, meta = load_matcher(warm_start, device)
        net.load_state_dict(start.state_dict())
        step = int(meta.get("steps", 0))
        log.info("warm start from %s at step %d (a fresh optimiser)", warm_start, step)
    return step


def train_matcher(
    out: str | Path,
    config: MatcherTrainConfig = MatcherTrainConfig(),
    device: str = "cpu",
    resume: bool = False,
    meta: dict | None = None,
    on_step: Callable[[MatcherStepLog], None] | None = None,
    stop_after_s: float | None = None,
    warm_start: str | Path | None = None,
) -> MatcherNet:
    """Train a matcher; write it to ``out`` (kind ``matcher2d``, ``meta`` and the config in its card
    data), ``out``.ckpt and ``out``.log.jsonl. ``stop_after_s``: stop (checkpointed, the model written)
    after this many seconds; ``resume`` goes on with the same schedule. ``warm_start``: without a
    checkpoint, start from these weights at the step they were written at, with a fresh optimiser."""
    out = Path(out)
    torch.manual_seed(config.seed)
    dev = torch.device(device)
    net = MatcherNet(config.network).to(dev)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    step = _start(out, net, optimiser, generator, resume, warm_start, device)
    log_path = out.with_suffix(".log.jsonl")
    if step == 0:
        log_path.unlink(missing_ok=True)
    pool = source_pool(config.sources, dev)
    clock = time.perf_counter()
    net.train()
    while step < config.steps and (stop_after_s is None or time.perf_counter() - clock < stop_after_s):
        lr = cosine_lr(config.lr, step / max(config.steps - 1, 1))
        for group in optimiser.param_groups:
            group["lr"] = lr
        pairs = make_pairs(pool, config.batch, config.pairs, generator, dev)
        loss, stats = matcher_loss(net, pairs, config.loss, config.matching)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimiser.step()
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            entry = MatcherStepLog(step, float(loss.detach()), stats, lr, time.perf_counter() - clock)
            with log_path.open("a") as f:
                f.write(json.dumps(asdict(entry)) + "\n")
            if on_step is not None:
                on_step(entry)
        if step % config.checkpoint_every == 0:
            save_checkpoint(out.with_suffix(".ckpt"), net, optimiser, generator, step)
    save_checkpoint(out.with_suffix(".ckpt"), net, optimiser, generator, step)
    save_weights(out, net, KIND, {**(meta or {}), "train_config": asdict(config), "steps": step})
    return net.eval()


def evaluate_matcher(
    net: MatcherNet,
    pool: SourcePool | None,
    families: tuple[str, ...] = HELD_OUT_FAMILIES,
    pairs_per_family: int = 64,
    seed: int = 1,
    base: PairConfig | None = None,
    matching: Matcher2dConfig | None = None,
) -> dict[str, dict[str, float]]:
    """Per family: ``image0`` rendered by it, ``image1`` plain; matches per pair, the share within 3
    and 8 pixels of the truth, the median error of those within 8, and the share of pairs with at
    least 20 matches within 3 pixels (enough for a homography). Pairs depend only on ``seed``;
    ``base``: the pairs' geometry (default :class:`PairConfig`)."""
    device = next(net.parameters()).device
    base, matching = base or PairConfig(), matching or Matcher2dConfig()
    report = {}
    for family in families:
        config = replace(base, families=(family,), plain_share=1.0, training=False)
        gen = torch.Generator().manual_seed(seed)
        errors, counts, good = [], 0, []
        for start in range(0, pairs_per_family, 8):
            pairs = make_pairs(pool, min(8, pairs_per_family - start), config, gen, device)
            with torch.no_grad():
                found = find_matches(
                    net.eval(), pairs.image0, pairs.image1, pairs.mask0, pairs.mask1, matching
                )
            truth = read_at(pairs.to1, found.batch, found.points0_px)
            error = torch.linalg.norm(found.points1_px - truth, dim=-1)
            errors.append(error.cpu())
            counts += len(found)
            correct = torch.bincount(found.batch[error <= 3].cpu(), minlength=len(pairs.to1))
            good.append((correct >= 20).float())
        error = torch.cat(errors)
        near = error[error <= 8]
        report[family] = {
            "matches_per_pair": counts / pairs_per_family,
            "precision_3px": float((error <= 3).float().mean()) if len(error) else 0.0,
            "precision_8px": float((error <= 8).float().mean()) if len(error) else 0.0,
            "median_error_px": float(near.median()) if len(near) else float("nan"),
            "pairs_with_20_correct": float(torch.cat(good).mean()),
        }
    return report
