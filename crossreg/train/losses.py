"""Descriptor losses with a negative curriculum: CrossKEY's triplet loss with dynamic hard-negative
mining, and an InfoNCE variant (the default: measured to train where the triplet loss collapsed).

**Triplet.**
For every corresponding pair ``(a_i, p_i)`` a negative ``n_i`` is drawn from the other side's points
that lie at least ``min_negative_mm`` away (points closer than that are the same anatomy, not a
negative). Early in training the negative is a random *far* point (``far_mm`` away: easy, spatial);
as ``hardness`` grows to 1 it is, for that fraction of anchors, the closest descriptor among the
allowed points (hardest in the pair). Both directions (MRI -> ultrasound and back) are used.

**InfoNCE.** Each point must pick its partner out of all the other side's points by a softmax over
similarities / ``temperature``. The same curriculum applies to which points count as negatives: at
hardness 0 only points ``far_mm`` away, growing to every point ``min_negative_mm`` away at hardness 1
(near anatomy, the hardest to tell apart, comes last). Both directions are used.

**Bank InfoNCE** (the default). As registration with dense candidates does, each ultrasound point
must pick its partner out of the MRI points *and* a bank of MRI points drawn over the whole brain, so
the descriptors learn to be unique at brain scale, not only within a cone. The same curriculum decides
which MRI points count as negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossConfig:
    """Which descriptor loss :func:`descriptor_loss` computes, and its negative curriculum (module
    docstring); lengths in MRI world mm."""

    kind: str = "bank"  # "bank", "infonce" or "triplet" (module docstring; why "bank": docs/benchmarks.md)
    margin: float = 0.5  # triplet margin on Euclidean distances of unit descriptors (0..2)
    temperature: float = 0.07  # InfoNCE: cosine similarities are divided by this before the softmax
    # Points within this, mm, are the same anatomy, never negatives; at hardness 1 every point beyond it
    # is one (why this close: docs/benchmarks.md, near negatives).
    min_negative_mm: float = 3.0
    # Only points farther than this, mm, are negatives at hardness 0 (easy, spatial negatives).
    far_mm: float = 20.0

    def __post_init__(self) -> None:
        if self.kind not in ("bank", "infonce", "triplet"):
            raise ValueError(f"loss kind {self.kind!r}: use 'bank', 'infonce' or 'triplet'")


def descriptor_loss(
    desc_fixed: torch.Tensor,
    desc_moving: torch.Tensor,
    positions_mm: torch.Tensor,
    hardness: float,
    config: LossConfig = LossConfig(),
    generator: torch.Generator | None = None,
    bank: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss ``config.kind`` of corresponding unit descriptors ``(N, D)`` (row i of each side is one
    point, at MRI world position ``positions_mm[i]`` ``(N, d)``), and statistics. ``bank``: unit
    descriptors ``(M, D)`` of more MRI points and their positions ``(M, d)`` (the ``bank`` loss)."""
    if config.kind == "bank":
        if bank is None:
            raise ValueError("the bank loss needs a bank of MRI descriptors")
        return bank_infonce(desc_fixed, desc_moving, positions_mm, *bank, hardness, config)
    if config.kind == "infonce":
        return curriculum_infonce(desc_fixed, desc_moving, positions_mm, hardness, config)
    return curriculum_triplet(desc_fixed, desc_moving, positions_mm, hardness, config, generator)


def _nearest_negative_mm(hardness: float, config: LossConfig) -> float:
    """How close to a point its nearest allowed negative may lie: ``far_mm`` at hardness 0, shrinking
    to ``min_negative_mm`` at hardness 1 (the negative curriculum)."""
    return config.far_mm - hardness * (config.far_mm - config.min_negative_mm)


def curriculum_infonce(
    desc_fixed: torch.Tensor,
    desc_moving: torch.Tensor,
    positions_mm: torch.Tensor,
    hardness: float,
    config: LossConfig = LossConfig(),
) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE with negatives limited by distance (module docstring), and statistics:
    mean positive/negative cosine similarity and top-1 accuracy among the allowed points."""
    spatial = torch.cdist(positions_mm, positions_mm)
    nearest_negative = _nearest_negative_mm(hardness, config)
    excluded = (spatial <= nearest_negative) & ~torch.eye(
        len(spatial), dtype=torch.bool, device=spatial.device
    )
    similarity = desc_moving @ desc_fixed.T
    logits = (similarity / config.temperature).masked_fill(excluded, float("-inf"))
    target = torch.arange(len(logits), device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    with torch.no_grad():
        negatives = similarity.masked_fill(
            excluded | torch.eye(len(spatial), dtype=torch.bool, device=spatial.device), float("nan")
        )
        stats = {
            "positive": float(similarity.diagonal().mean()),
            "negative": float(negatives.nanmean()),
            "accuracy": float((logits.argmax(dim=1) == target).float().mean()),
        }
    return loss, stats


def bank_infonce(
    desc_fixed: torch.Tensor,
    desc_moving: torch.Tensor,
    positions_mm: torch.Tensor,
    desc_bank: torch.Tensor,
    bank_mm: torch.Tensor,
    hardness: float,
    config: LossConfig = LossConfig(),
) -> tuple[torch.Tensor, dict[str, float]]:
    """InfoNCE of ultrasound descriptors ``(N, D)`` against their MRI partners ``(N, D)`` plus an MRI
    bank ``(M, D)`` at ``bank_mm`` ``(M, d)`` (module docstring), and statistics: positive/negative
    similarity, top-1 accuracy, and the fraction of points whose best candidate lies within 3 mm."""
    candidates = torch.cat([desc_fixed, desc_bank])
    where = torch.cat([positions_mm, bank_mm])
    spatial = torch.cdist(positions_mm, where)
    nearest_negative = _nearest_negative_mm(hardness, config)
    target = torch.arange(len(desc_moving), device=desc_moving.device)
    own = torch.zeros_like(spatial, dtype=torch.bool)
    own[target, target] = True
    excluded = (spatial <= nearest_negative) & ~own
    similarity = desc_moving @ candidates.T
    logits = (similarity / config.temperature).masked_fill(excluded, float("-inf"))
    loss = F.cross_entropy(logits, target)
    with torch.no_grad():
        best = similarity.argmax(dim=1)
        stats = {
            "positive": float(similarity[target, target].mean()),
            "negative": float(similarity.masked_fill(excluded | own, float("nan")).nanmean()),
            "accuracy": float((logits.argmax(dim=1) == target).float().mean()),
            "within_3mm": float((spatial[target, best] <= 3.0).float().mean()),
        }
    return loss, stats


def _negatives(
    desc_dist: torch.Tensor,
    allowed: torch.Tensor,
    hardness: float,
    config: LossConfig,
    spatial: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Index ``(N,)`` of each anchor's negative among the columns: hardest allowed or random far."""
    hardest = desc_dist.masked_fill(~allowed, float("inf")).argmin(dim=1).cpu()
    far = (spatial > config.far_mm).cpu()
    weights = torch.where(far.any(dim=1, keepdim=True), far, allowed.cpu()).double() + 1e-12
    random_far = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    use_hard = torch.rand(len(hardest), generator=generator) < hardness
    return torch.where(use_hard, hardest, random_far).to(desc_dist.device)


def curriculum_triplet(
    desc_fixed: torch.Tensor,
    desc_moving: torch.Tensor,
    positions_mm: torch.Tensor,
    hardness: float,
    config: LossConfig = LossConfig(),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean triplet loss of corresponding unit descriptors ``(N, D)`` (row i of each side is one point,
    at ``positions_mm[i]`` ``(N, d)``), and statistics: positive/negative distances, active fraction."""
    generator = generator or torch.Generator().manual_seed(0)
    spatial = torch.cdist(positions_mm, positions_mm)
    allowed = spatial > config.min_negative_mm
    losses, pos, neg = [], [], []
    for anchor, other in ((desc_moving, desc_fixed), (desc_fixed, desc_moving)):
        dist = torch.cdist(anchor, other)
        positive = dist.diagonal()
        with torch.no_grad():
            index = _negatives(dist.detach(), allowed, hardness, config, spatial, generator)
        negative = dist.gather(1, index[:, None]).squeeze(1)
        losses.append(F.relu(config.margin + positive - negative))
        pos.append(positive.detach())
        neg.append(negative.detach())
    loss = torch.cat(losses)
    stats = {
        "positive": float(torch.cat(pos).mean()),
        "negative": float(torch.cat(neg).mean()),
        "active": float((loss > 0).float().mean()),
    }
    return loss.mean(), stats
