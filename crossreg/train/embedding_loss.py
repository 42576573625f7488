"""The loss of universal anatomical embeddings on one pair of views with known correspondence.

- Local: pixel-level InfoNCE; each point of view A against every sampled point of view B (those within
  ``same_mm`` of the true match excluded: they are the same place) plus ``near`` hard negatives
  ``near_mm`` from the match, which teach the exact position.
- Semantic: InfoNCE with only points further than ``semantic_exclude_mm`` as negatives: nearby points
  share a structure and may embed alike.
- Prototypical: the semantic vectors of both views are clustered (spherical k-means); each view's
  vector must pick, among the prototypes, the cluster of its partner in the other view, so look-alikes
  of different anatomy separate and the same anatomy under another contrast joins.
Both directions (A->B, B->A) count for the InfoNCE terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class EmbeddingLossConfig:
    """Weights, temperatures and negatives of :func:`embedding_loss`."""

    local_temperature: float = 0.07
    semantic_temperature: float = 0.1
    prototype_temperature: float = 0.1
    prototype_weight: float = 0.25  # weight of the prototypical term (0: off)
    prototypes: int = 24  # clusters of the prototypical term
    kmeans_iterations: int = 8
    near: int = 8  # hard negatives per point for the local embedding
    near_mm: tuple[float, float] = (3.0, 10.0)  # their distance from the true match, mm
    same_mm: float = 2.5  # sampled points closer than this to the match are not negatives (local)
    semantic_exclude_mm: float = 12.0  # sampled points closer than this are not semantic negatives

    def __post_init__(self) -> None:
        if min(self.local_temperature, self.semantic_temperature, self.prototype_temperature) <= 0:
            raise ValueError(f"temperatures must be > 0: {self}")
        if self.prototypes < 2 or self.near < 0 or not 0 < self.near_mm[0] <= self.near_mm[1]:
            raise ValueError(f"invalid EmbeddingLossConfig {self}")


def _info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    excluded: torch.Tensor,
    temperature: float,
    extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of queries ``q`` ``(N, C)`` whose positive is the same row of keys ``k`` ``(N, C)``; the
    other keys are negatives except ``excluded`` ``(N, N)``; ``extra`` ``(N, K)`` more negative logits."""
    logits = q @ k.T / temperature
    logits = logits.masked_fill(excluded, float("-inf"))
    if extra is not None:
        logits = torch.cat([logits, extra / temperature], dim=1)
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def spherical_kmeans(x: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Unit prototypes ``(k, C)`` of unit vectors ``x`` ``(N, C)`` (k <= N), started at random rows."""
    centres = x[torch.randperm(len(x), generator=generator)[:k].to(x.device)]
    for _ in range(iterations):
        assign = (x @ centres.T).argmax(dim=1)
        summed = torch.zeros_like(centres).index_add_(0, assign, x)
        empty = summed.norm(dim=1) == 0
        centres = torch.where(empty[:, None], centres, F.normalize(summed, dim=1))
    return centres


def embedding_loss(
    sem_a: torch.Tensor,
    loc_a: torch.Tensor,
    sem_b: torch.Tensor,
    loc_b: torch.Tensor,
    loc_near: torch.Tensor,
    b_world: torch.Tensor,
    config: EmbeddingLossConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of ``N`` corresponding points (row i of A's vectors matches row i of B's) and its
    statistics. sem_*: ``(N, S)``; loc_*: ``(N, L)`` unit vectors; loc_near: ``(N, K, L)`` B's local
    vectors at hard negatives; b_world: ``(N, d)`` the points in B, mm."""
    n = len(b_world)
    apart = torch.cdist(b_world, b_world)
    eye = torch.eye(n, dtype=torch.bool, device=b_world.device)
    same = (apart < config.same_mm) & ~eye
    near_logits = torch.einsum("nc,nkc->nk", loc_a, loc_near) if config.near else None
    local = 0.5 * (
        _info_nce(loc_a, loc_b, same, config.local_temperature, near_logits)
        + _info_nce(loc_b, loc_a, same, config.local_temperature)
    )
    region = (apart < config.semantic_exclude_mm) & ~eye
    semantic = 0.5 * (
        _info_nce(sem_a, sem_b, region, config.semantic_temperature)
        + _info_nce(sem_b, sem_a, region, config.semantic_temperature)
    )
    loss = local + semantic
    stats = {"local": float(local.detach()), "semantic": float(semantic.detach())}
    if config.prototype_weight > 0:
        both = torch.cat([sem_a, sem_b]).detach()
        centres = spherical_kmeans(both, min(config.prototypes, n), config.kmeans_iterations, generator)
        assign_a, assign_b = (sem_a.detach() @ centres.T).argmax(1), (sem_b.detach() @ centres.T).argmax(1)
        proto = 0.5 * (
            F.cross_entropy(sem_a @ centres.T / config.prototype_temperature, assign_b)
            + F.cross_entropy(sem_b @ centres.T / config.prototype_temperature, assign_a)
        )
        loss = loss + config.prototype_weight * proto
        stats["prototype"] = float(proto.detach())
    with torch.no_grad():
        found = (loc_a @ loc_b.T).argmax(dim=1)
        stats["top1_2mm"] = float((apart[torch.arange(n), found] <= 2.0).float().mean())
        found_s = (sem_a @ sem_b.T).argmax(dim=1)
        stats["semantic_top1_10mm"] = float((apart[torch.arange(n), found_s] <= 10.0).float().mean())
    return loss, stats
