"""Descriptor matching: mutual nearest neighbours and Lowe's ratio test, batched and chunked in torch.

Distances are Euclidean in descriptor space. Rows of ``desc0`` are compared with all of ``desc1`` a
chunk at a time, so no more than ``chunk_size x N1`` distances exist at once: 10k x 10k matches of
256-d descriptors need ~100 MB and a few seconds on a CPU. The same code runs on CUDA tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

#: Distances held at once by one chunk (32 M float32: 128 MB): fewer rows than ``chunk_size`` when
#: each row compares with that many candidates.
_CHUNK_DISTANCES = 2**25


@dataclass(frozen=True)
class MatchConfig:
    """Which nearest-neighbour pairs :func:`match` keeps."""

    # Lowe's ratio test: keep desc0[i] only if its nearest / second-nearest descriptor distance in desc1
    # is at most this (> 0; the ratio never exceeds 1, so 1.0 disables the test).
    max_ratio: float = 0.9
    mutual: bool = True  # keep a pair only if each descriptor is the other's nearest neighbour
    # Rows of desc0 compared at once (>= 1; fewer when desc1 is long, _CHUNK_DISTANCES): memory holds at
    # most chunk_size x N1 distances.
    chunk_size: int = 2048

    def __post_init__(self) -> None:
        if self.max_ratio <= 0:
            raise ValueError(
                f"MatchConfig.max_ratio must be > 0 (1.0 disables the test), got {self.max_ratio}"
            )
        if self.chunk_size < 1:
            raise ValueError(f"MatchConfig.chunk_size must be >= 1, got {self.chunk_size}")


@dataclass(frozen=True, eq=False)
class Matches:
    """Corresponding pairs ``(desc0[i0[m]], desc1[i1[m]])``, in increasing ``i0``.

    i0, i1: (M,) int64 indices into ``desc0`` and ``desc1``.
    distance: (M,) Euclidean descriptor distance of each pair.
    ratio: (M,) nearest / second-nearest distance of ``desc0[i0]`` among ``desc1``; 0 when
        ``desc1`` has a single row (the second-nearest is then taken as +inf), 1 for exact ties.
    """

    i0: torch.Tensor
    i1: torch.Tensor
    distance: torch.Tensor
    ratio: torch.Tensor

    def __len__(self) -> int:
        return int(self.i0.shape[0])


def match(desc0: torch.Tensor, desc1: torch.Tensor, config: MatchConfig = MatchConfig()) -> Matches:
    """Nearest-neighbour matches of ``desc0`` in ``desc1`` that pass the ratio and mutual tests.

    desc0: (N0, C) float tensor; desc1: (N1, C) float tensor on the same device. Computed in float32
    (float64 if an input is float64); results lie on the inputs' device. Either input may be empty.
    """
    _check_inputs(desc0, desc1)
    dtype = _float_dtype(desc0.dtype, desc1.dtype)
    a, b = desc0.to(dtype), desc1.to(dtype)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return _empty_matches(a)
    # Distances ignore a common shift; removing the mean shrinks the norms that cancel in
    # |a|^2 + |b|^2 - 2ab, which matters for descriptors that are all positive (MIND lies in [0, 1]).
    center = b.mean(dim=0)
    a, b = a - center, b - center
    nn1, best_sq, second_sq, nn0 = _nearest_neighbours(a, b, config.chunk_size, config.mutual)
    distance, second = best_sq.sqrt(), second_sq.sqrt()
    # Equal nearest and second-nearest distances (duplicates in desc1) are as ambiguous as it gets.
    ratio = torch.where(second > 0, distance / second, torch.ones_like(distance))
    i0 = torch.arange(a.shape[0], device=a.device)
    keep = ratio <= config.max_ratio
    if config.mutual:
        keep &= nn0[nn1] == i0
    logger.debug("match: %d x %d descriptors -> %d matches", a.shape[0], b.shape[0], int(keep.sum()))
    return Matches(i0[keep], nn1[keep], distance[keep], ratio[keep])


def match_shortlisted(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    second0: torch.Tensor,
    second1: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    chunk_size: int = 2048,
) -> Matches:
    """Each row of ``desc0`` matched to one of its ``k`` nearest rows of ``desc1``: the nearest in both
    descriptors at once, unit ``desc`` and unit second descriptors weighing the same (the squared
    distance is the mean of the two squared distances). The second descriptors are ``second0``
    ``(N0, C')`` and, for rows of ``desc1``, ``second1(index)`` ``(*index.shape, C')``: computed for the
    shortlists only, so an expensive second descriptor costs ``N0 x k`` evaluations, not ``N1``.

    Every row of ``desc0`` is matched (no mutual test); ``ratio`` compares the best two of the
    shortlist. Either input may be empty.
    """
    _check_inputs(desc0, desc1)
    a, b = desc0.float(), desc1.float()
    if a.shape[0] == 0 or b.shape[0] == 0:
        return _empty_matches(a)
    k = min(k, b.shape[0])
    first_sq, shortlist = [], []
    for _, d_sq in _distance_chunks(a, b, chunk_size):
        values, index = d_sq.topk(k, dim=1, largest=False)
        first_sq.append(values)
        shortlist.append(index)
    first, index = torch.cat(first_sq), torch.cat(shortlist)
    other = second1(index).to(a)
    second_sq = (other - second0.to(a)[:, None, :]).square().sum(dim=-1)
    combined = 0.5 * (first + second_sq)
    best = combined.topk(min(2, k), dim=1, largest=False)
    distance = best.values[:, 0].sqrt()
    ratio = torch.ones_like(distance)
    if k > 1:
        second = best.values[:, 1].sqrt()
        ratio = torch.where(second > 0, distance / second, ratio)
    i0 = torch.arange(a.shape[0], device=a.device)
    return Matches(i0, index[i0, best.indices[:, 0]], distance, ratio)


def _nearest_neighbours(
    a: torch.Tensor, b: torch.Tensor, chunk_size: int, both_ways: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest row of ``b`` for each row of ``a`` and (``both_ways``) vice versa, one chunk of ``a`` at
    a time.

    a: (N0, C); b: (N1, C). Returns nn1 (N0,) indices into b, best_sq and second_sq (N0,) squared
    distances to the nearest and second-nearest row of b (+inf if N1 < 2), and nn0 (N1,) indices into a
    (zeros unless ``both_ways``: the mutual test alone reads them).
    """
    n0, n1 = a.shape[0], b.shape[0]
    k = min(2, n1)
    nn1 = torch.empty(n0, dtype=torch.long, device=a.device)
    top_sq = torch.full((n0, 2), float("inf"), dtype=a.dtype, device=a.device)
    col_best = torch.full((n1,), float("inf"), dtype=a.dtype, device=a.device)
    nn0 = torch.zeros(n1, dtype=torch.long, device=a.device)
    for start, d_sq in _distance_chunks(a, b, chunk_size):
        values, index = d_sq.topk(k, dim=1, largest=False)
        top_sq[start : start + d_sq.shape[0], :k] = values
        nn1[start : start + d_sq.shape[0]] = index[:, 0]
        if not both_ways:
            continue
        col_min, col_arg = d_sq.min(dim=0)
        # Strict '<' keeps the earliest row on ties, as an unchunked argmin would.
        better = col_min < col_best
        col_best = torch.where(better, col_min, col_best)
        nn0 = torch.where(better, col_arg + start, nn0)
    return nn1, top_sq[:, 0], top_sq[:, 1], nn0


def _distance_chunks(a: torch.Tensor, b: torch.Tensor, chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, d_sq)``: squared Euclidean distances (R, N1) of rows ``a[start : start + R]`` of a (N0, C)
    to b (N1, C), R at most ``chunk_size``. Every chunk is written into one buffer: a whole image's grid
    of candidates gives rows of 10^5 distances, and a fresh buffer per chunk costs more in page faults
    than the arithmetic; a chunk is valid until the next. R is also at most :data:`_CHUNK_DISTANCES` /
    N1, unless that is under 2 C: each chunk reads all of b, which should cost less than its distances.
    """
    rows_per_chunk = max(1, min(chunk_size, max(_CHUNK_DISTANCES // max(b.shape[0], 1), 2 * b.shape[1])))
    b_sq = (b * b).sum(dim=1)
    buffer = torch.empty(min(rows_per_chunk, a.shape[0]), b.shape[0], dtype=a.dtype, device=a.device)
    for start in range(0, a.shape[0], rows_per_chunk):
        rows = a[start : start + rows_per_chunk]
        rows_sq = (rows * rows).sum(dim=1, keepdim=True)
        d_sq = torch.add(rows_sq, b_sq, out=buffer[: rows.shape[0]])
        yield start, d_sq.addmm_(rows, b.T, alpha=-2.0).clamp_min_(0.0)


def _check_inputs(desc0: torch.Tensor, desc1: torch.Tensor) -> None:
    if desc0.dim() != 2 or desc1.dim() != 2:
        raise ValueError(f"descriptors must be (N, C) tensors, got shapes {desc0.shape} and {desc1.shape}")
    if desc0.shape[1] != desc1.shape[1]:
        raise ValueError(f"descriptor lengths differ: {desc0.shape[1]} vs {desc1.shape[1]}")
    if desc0.device != desc1.device:
        raise ValueError(f"descriptors are on different devices: {desc0.device} vs {desc1.device}")


def _float_dtype(dtype0: torch.dtype, dtype1: torch.dtype) -> torch.dtype:
    """float64 if either input is float64, else float32 (half precision loses too much in distances)."""
    return torch.float64 if torch.float64 in (dtype0, dtype1) else torch.float32


def _empty_matches(like: torch.Tensor) -> Matches:
    index = torch.empty(0, dtype=torch.long, device=like.device)
    value = torch.empty(0, dtype=like.dtype, device=like.device)
    return Matches(index, index.clone(), value, value.clone())
