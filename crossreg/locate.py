"""Find points of one image in another by their descriptors: one-shot landmarks and lesion tracking.

For each point of the source image, :func:`locate` searches the target image coarse to fine: the
coarse descriptor (``Description.coarse_at``: the semantic embedding) over the target's whole field of
view on a ``coarse_spacing_mm`` grid, keeping the ``candidates`` best hits; then the full descriptor
(``at``) in a window around each hit on the working grid, and around the best one at
``refine_spacing_mm``, ``refine_spacing_mm / 2``. Features without a coarse descriptor (MIND-SSC) search
with ``at`` on the working grid everywhere: the nearest-neighbour baseline.

The fixed-point test: the found point is searched back in the source the same way; a point whose round
trip ends more than ``round_trip_mm`` from where it began is not a fixed point of the matching and is
reported as unreliable (:func:`crossreg.verify.round_trip` is the same test for matches carried by a
transform).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from crossreg.errors import CrossregError, DimensionMismatchError, InvalidConfigError
from crossreg.features.base import Description, Features, Reader
from crossreg.image import Image
from crossreg.resample import working_image

#: Working grid spacing of :func:`find_points`, mm: the embeddings are trained at 2 mm.
SPACING_MM = 2.0


@dataclass(frozen=True)
class LocateConfig:
    """The coarse-to-fine search of :func:`locate`; lengths in mm."""

    coarse_spacing_mm: float = 4.0  # grid of the whole-image search with the coarse descriptor
    candidates: int = 6  # best coarse hits searched finely
    window_mm: float = 8.0  # half-width of the fine search around each coarse hit
    refine_spacing_mm: float = 1.0  # spacing of the last searches around the best point
    round_trip_mm: float = 4.0  # a round trip ending further from its start is unreliable
    chunk: int = 4096  # target points scored at once (memory)

    def __post_init__(self) -> None:
        lengths = (self.coarse_spacing_mm, self.window_mm, self.refine_spacing_mm, self.round_trip_mm)
        if min(lengths) <= 0 or self.candidates < 1 or self.chunk < 1:
            raise InvalidConfigError(f"LocateConfig needs positive lengths and counts: {self}")


@dataclass(frozen=True)
class Located:
    """Points found in the target: ``points_mm`` ``(N, d)``, ``score`` ``(N,)`` (descriptor similarity,
    1 = identical), ``round_trip_mm`` ``(N,)`` (how far the way back ended from the start) and
    ``reliable`` ``(N,)`` (the round trip came back within the tolerance)."""

    points_mm: np.ndarray
    score: np.ndarray
    round_trip_mm: np.ndarray
    reliable: np.ndarray


def field_of_view_points(description: Description, spacing_mm: float) -> torch.Tensor:
    """World points ``(M, d)`` float64 of the described image's field of view on a grid of ``spacing_mm``
    (a subsampling of its working grid)."""
    image = description.image
    step = max(1, round(spacing_mm / float(image.spacing_mm[0])))
    mask = image.valid_mask()[(slice(None, None, step),) * image.ndim]
    index_xyz = np.argwhere(mask)[:, ::-1] * step
    return torch.from_numpy(image.grid.index_to_world(index_xyz.astype(np.float64)))


def _offsets(half_width_mm: float, spacing_mm: float, ndim: int) -> torch.Tensor:
    """``(K, d)`` offsets of a cube of half-width ``half_width_mm`` sampled every ``spacing_mm``."""
    n = int(np.floor(half_width_mm / spacing_mm + 1e-9))
    ticks = [k * spacing_mm for k in range(-n, n + 1)]
    return torch.tensor(list(itertools.product(ticks, repeat=ndim)), dtype=torch.float64)


def _best(
    queries: torch.Tensor, read: Reader, candidates_mm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query ``i``, the best of its own candidates ``candidates_mm[i]`` ``(N, K, d)``: ``(N, d)``
    points and ``(N,)`` similarities."""
    n, k, d = candidates_mm.shape
    described = read(candidates_mm.reshape(-1, d)).reshape(n, k, -1)
    similarity = torch.einsum("nc,nkc->nk", queries.to(described), described)
    score, which = similarity.max(dim=1)
    return candidates_mm[torch.arange(n), which.cpu()], score.cpu()


def _coarse_hits(
    queries: torch.Tensor, read: Reader, grid_mm: torch.Tensor, k: int, chunk: int
) -> torch.Tensor:
    """``(N, k, d)`` points of ``grid_mm`` ``(M, d)`` whose descriptors (``read``, in blocks of
    ``chunk`` points) are the ``k`` most similar to each query ``(N, C)``."""
    best_score = torch.full((len(queries), 0), -np.inf)
    best_index = torch.zeros((len(queries), 0), dtype=torch.long)
    for start in range(0, len(grid_mm), chunk):
        block = (queries @ read(grid_mm[start : start + chunk]).to(queries).T).cpu()
        score = torch.cat([best_score, block], dim=1)
        index = torch.cat([best_index, torch.arange(start, start + block.shape[1]).expand_as(block)], dim=1)
        best_score, which = score.topk(min(k, score.shape[1]), dim=1)
        best_index = index.gather(1, which)
    return grid_mm[best_index]


def search(source: Description, points_mm: torch.Tensor, target: Description, config: LocateConfig):
    """``points_mm`` ``(N, d)`` of the source image found in the target: ``(N, d)`` points, ``(N,)``
    scores (coarse to fine; see the module notes)."""
    points_mm = points_mm.double()
    d = points_mm.shape[1]
    spacing = float(target.image.spacing_mm[0])
    if target.coarse_at is not None and source.coarse_at is not None:
        grid = field_of_view_points(target, config.coarse_spacing_mm)
        queries = source.coarse_at(points_mm)
        hits = _coarse_hits(queries, target.coarse_at, grid, config.candidates, config.chunk)
        window = _offsets(config.window_mm, spacing, d)
        around = (hits[:, :, None, :] + window).reshape(len(points_mm), -1, d)
    else:
        grid = field_of_view_points(target, spacing)
        around = _coarse_hits(source.at(points_mm), target.at, grid, 1, config.chunk)
    queries = source.at(points_mm)
    found, score = _chunked_best(queries, target.at, around, config.chunk)
    for step in (config.refine_spacing_mm, config.refine_spacing_mm / 2):
        found, score = _best(queries, target.at, found[:, None, :] + _offsets(2 * step, step, d))
    return found, score


def _chunked_best(
    queries: torch.Tensor, read: Reader, candidates_mm: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_best` over queries in blocks of about ``chunk`` candidate reads x 16."""
    per = max(1, 16 * chunk // candidates_mm.shape[1])
    parts = [
        _best(queries[i : i + per], read, candidates_mm[i : i + per]) for i in range(0, len(queries), per)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def locate(
    source: Description, points_mm: np.ndarray, target: Description, config: LocateConfig = LocateConfig()
) -> Located:
    """Find ``points_mm`` ``(N, d)`` (world mm, LPS) of the source image in the target, each with its
    similarity and the fixed-point test (searched back into the source)."""
    start = torch.from_numpy(np.asarray(points_mm, dtype=np.float64))
    found, score = search(source, start, target, config)
    back, _ = search(target, found, source, config)
    trip = torch.linalg.norm(back - start, dim=1)
    return Located(
        found.numpy(), score.numpy().astype(np.float64), trip.numpy(), (trip <= config.round_trip_mm).numpy()
    )


def find_points(
    source: Image,
    points_mm: np.ndarray,
    target: Image,
    features: Features,
    config: LocateConfig = LocateConfig(),
    spacing_mm: float = SPACING_MM,
) -> Located:
    """``points_mm`` ``(N, d)`` (world mm, LPS) of image ``source`` found in image ``target``: both put
    on working grids of ``spacing_mm``, described by ``features``, searched by :func:`locate`. Raises
    CrossregError for points outside the source image and for images of different dimensions."""
    if source.ndim != target.ndim:
        raise DimensionMismatchError(f"the images are {source.ndim}D and {target.ndim}D; they must agree")
    points_mm = np.asarray(points_mm, dtype=np.float64)
    if points_mm.ndim != 2 or points_mm.shape[1] != source.ndim:
        raise CrossregError(
            f"points must be (N, {source.ndim}) for a {source.ndim}D image, got {points_mm.shape}"
        )
    work_source, work_target = working_image(source, spacing_mm), working_image(target, spacing_mm)
    outside = ~work_source.grid.contains(points_mm, margin_vox=0.5)
    if outside.any():
        rows = ", ".join(str(i + 1) for i in np.flatnonzero(outside)[:5])
        raise CrossregError(
            f"{int(outside.sum())} point(s) lie outside the image they were placed on (rows {rows}): "
            "give world coordinates in mm (LPS) inside it"
        )
    return locate(features.describe(work_source), points_mm, features.describe(work_target), config)
