"""Matching two 2D images with the matcher network: coarse matches, then sub-pixel refinement.

1. **coarse**: the attention-transformed 1/8 features of both images are compared all against all
   (cosine similarity over ``temperature``); a dual softmax (over rows and over columns) gives each
   pair of cells a confidence, and a pair is a match when each cell is the other's most confident
   partner and the confidence exceeds ``Matcher2dConfig.threshold``. Its points are the two cells'
   centres. Cosine similarities are bounded (by 1 / ``temperature``), so the exponentials need no
   running maximum: one pass of ``exp`` serves both softmaxes, and matching a pair
   (:func:`coarse_matches`) keeps only its cells inside the fields of view;
2. **fine**: the fine (1/4) feature at the first cell's centre is correlated with the fine features on
   a ``window`` x ``window`` grid around the second cell's centre (one fine pixel apart); the
   expectation of the softmax of that correlation moves the second point to sub-pixel precision.

Coordinates are pixels ``(x, y)``, the centre of the top-left pixel at ``(0, 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from crossreg.features.weights import ModelLoadError, load_weights, shipped_weights
from crossreg.matcher2d.net import COARSE_STRIDE, FINE_STRIDE, MatcherNet, MatcherNetConfig, structure_input

KIND = "matcher2d"
SHIPPED = "matcher2d_v1.pt"


@dataclass(frozen=True)
class Matcher2dConfig:
    """How matches are read from the network's features."""

    threshold: float = 0.2  # dual-softmax confidence a coarse match needs (0..1)
    temperature: float = 0.05  # of the coarse cosine similarities (the one the network was trained with)
    window: int = 5  # fine search window, in fine pixels (odd; each 4 image pixels)

    def __post_init__(self) -> None:
        # exp(1 / temperature) times a grid's cells must stay a finite float32: temperature >= 0.02.
        bad_temperature = not 0.02 <= self.temperature <= 1
        if not 0 <= self.threshold < 1 or bad_temperature or self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"invalid Matcher2dConfig {self}")


@dataclass(frozen=True, eq=False)
class MatchedPoints:
    """Matches between two images: ``points0_px``, ``points1_px`` ``(M, 2)`` float pixel ``(x, y)``,
    ``confidence`` ``(M,)`` in [0, 1] (the coarse dual-softmax), ``batch`` ``(M,)`` the pair of each."""

    points0_px: torch.Tensor
    points1_px: torch.Tensor
    confidence: torch.Tensor
    batch: torch.Tensor

    def __len__(self) -> int:
        return int(self.points0_px.shape[0])


def coarse_masks(masks: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: coarse cells of pixel masks ``(B, 1, H, W)`` at least half inside."""
    return (F.avg_pool2d(masks.float(), COARSE_STRIDE) >= 0.5).flatten(1)


def dual_softmax(
    f0: torch.Tensor, f1: torch.Tensor, mask0: torch.Tensor, mask1: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``(B, L0, L1)`` confidence of every pair of coarse cells: softmax over rows times over columns
    of the cosine similarities over ``temperature`` of features ``(B, L0, C)`` and ``(B, L1, C)``;
    0 outside the masks ``(B, L0)``, ``(B, L1)`` bool."""
    sim = torch.einsum("blc,bsc->bls", F.normalize(f0, dim=-1), F.normalize(f1, dim=-1)).float()
    weight = (mask0[:, :, None] & mask1[:, None, :]).float()
    e = torch.exp(sim / temperature) * weight
    return (e / e.sum(2, keepdim=True).clamp_min(1e-30)) * (e / e.sum(1, keepdim=True).clamp_min(1e-30))


def cell_centres(index: torch.Tensor, cells_x: int) -> torch.Tensor:
    """``(M, 2)`` pixel centres of coarse cells, row-major index ``(M,)`` on a grid ``cells_x`` wide."""
    xy = torch.stack([index % cells_x, torch.div(index, cells_x, rounding_mode="floor")], -1)
    return xy.float() * COARSE_STRIDE + (COARSE_STRIDE - 1) / 2


def coarse_matches(
    f0: torch.Tensor,
    f1: torch.Tensor,
    mask0: torch.Tensor,
    mask1: torch.Tensor,
    temperature: float,
    threshold: float,
) -> tuple[torch.Tensor, ...]:
    """Pair, row and column indices ``(M,)`` and confidence of the mutual best pairs of cells above
    ``threshold``: those :func:`dual_softmax` would give, for features ``(B, L0, C)``, ``(B, L1, C)``
    with masks ``(B, L0)``, ``(B, L1)`` bool, without its ``(B, L0, L1)`` temporaries."""
    found = [_pair_matches(*t, temperature, threshold) for t in zip(f0, f1, mask0, mask1, strict=True)]
    b = torch.cat([torch.full_like(i, k) for k, (i, _, _) in enumerate(found)])
    return b, *(torch.cat(parts) for parts in zip(*found, strict=True))


def _pair_matches(
    f0: torch.Tensor,
    f1: torch.Tensor,
    mask0: torch.Tensor,
    mask1: torch.Tensor,
    temperature: float,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`coarse_matches` of one pair: features ``(L0, C)``, ``(L1, C)``, masks ``(L0,)``, ``(L1,)``."""
    rows, cols = torch.nonzero(mask0)[:, 0], torch.nonzero(mask1)[:, 0]
    a, b = F.normalize(f0[rows].float(), dim=-1), F.normalize(f1[cols].float(), dim=-1)
    # One (L0', L1') matrix, updated in place: exp(sim), then (e / sqrt(row sum * column sum))^2,
    # which is e / row sum * e / column sum without an intermediate above 1.
    q = torch.mm(a / temperature, b.T).exp_()
    row_sum, col_sum = q.sum(1), q.sum(0)
    q.mul_(col_sum.rsqrt()[None]).mul_(row_sum.rsqrt()[:, None]).square_()
    # A column maximum compares values: cheaper than an index over rows.
    confidence, j = q.max(1)
    keep = (confidence == q.amax(0)[j]) & (confidence > threshold)
    return rows[keep], cols[j[keep]], confidence[keep]


def refine(
    fine0: torch.Tensor,
    fine1: torch.Tensor,
    batch: torch.Tensor,
    points0_px: torch.Tensor,
    points1_px: torch.Tensor,
    window: int,
) -> torch.Tensor:
    """``(M, 2)`` sub-pixel offsets (pixels) to add to ``points1_px`` ``(M, 2)``: the softmax-weighted
    mean of the window offsets, weighted by the correlation of fine map ``fine0`` ``(B, C, h, w)`` at
    ``points0_px`` with ``fine1`` at each offset around ``points1_px``; pair ``m`` is of ``batch[m]``."""
    radius = window // 2
    steps = torch.arange(-radius, radius + 1, device=fine0.device, dtype=torch.float32) * FINE_STRIDE
    oy, ox = torch.meshgrid(steps, steps, indexing="ij")
    offsets = torch.stack([ox, oy], -1).reshape(-1, 2)  # (W*W, 2)
    h, w = (s * FINE_STRIDE for s in fine0.shape[-2:])
    at0 = _read(fine0, batch, points0_px[:, None], (h, w))[:, 0]  # (M, C)
    at1 = _read(fine1, batch, points1_px[:, None] + offsets, (h, w))  # (M, W*W, C)
    heat = F.softmax(torch.einsum("mc,mkc->mk", at0, at1) / at0.shape[-1] ** 0.5, dim=1)
    return heat @ offsets


def _read(
    maps: torch.Tensor, batch: torch.Tensor, points_px: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """``(M, K, C)``: maps ``(B, C, h, w)`` (covering an image of ``size`` pixels) at points ``(M, K, 2)``
    of map ``batch`` ``(M,)``; one sampling per map, never a copy of a map per point."""
    h, w = size
    scale = torch.tensor([2.0 / w, 2.0 / h], device=points_px.device)
    grid = (points_px + 0.5) * scale - 1  # (M, K, 2)
    out = maps.new_empty(*points_px.shape[:2], maps.shape[1])
    for k in range(maps.shape[0]):
        chosen = batch == k
        sampled = F.grid_sample(maps[k : k + 1], grid[chosen][None], mode="bilinear", align_corners=False)
        out[chosen] = sampled[0].permute(1, 2, 0)  # (C, M_k, K) -> (M_k, K, C)
    return out


def find_matches(
    net: MatcherNet,
    images0: torch.Tensor,
    images1: torch.Tensor,
    masks0: torch.Tensor,
    masks1: torch.Tensor,
    config: Matcher2dConfig = Matcher2dConfig(),
) -> MatchedPoints:
    """Matches of batches of images ``(B, 1, H, W)`` with masks ``(B, 1, H, W)`` bool (sizes multiples
    of 8; the two batches may differ in size)."""
    c0, c1 = coarse_masks(masks0), coarse_masks(masks1)
    f0, f1, fine0, fine1 = net(structure_input(images0, masks0), structure_input(images1, masks1), c0, c1)
    b, i, j, score = coarse_matches(f0, f1, c0, c1, config.temperature, config.threshold)
    p0 = cell_centres(i, images0.shape[-1] // COARSE_STRIDE)
    p1 = cell_centres(j, images1.shape[-1] // COARSE_STRIDE)
    p1 = p1 + refine(fine0, fine1, b, p0, p1, config.window)
    return MatchedPoints(p0, p1, score, b)


def match_images(
    net: MatcherNet,
    image0: torch.Tensor,
    image1: torch.Tensor,
    mask0: torch.Tensor | None = None,
    mask1: torch.Tensor | None = None,
    config: Matcher2dConfig = Matcher2dConfig(),
) -> MatchedPoints:
    """Matches between two images ``(H0, W0)`` and ``(H1, W1)`` of any size (padded to multiples of 8,
    the padding outside the masks) with optional field-of-view masks of the same shapes."""
    device = next(net.parameters()).device
    padded = []
    for image, mask in ((image0, mask0), (image1, mask1)):
        h, w = image.shape
        pad = (0, -w % COARSE_STRIDE, 0, -h % COARSE_STRIDE)
        valid = torch.ones_like(image, dtype=torch.bool) if mask is None else mask.bool()
        padded += [F.pad(image.float(), pad)[None, None].to(device), F.pad(valid, pad)[None, None].to(device)]
    with torch.no_grad():
        found = find_matches(net, padded[0], padded[2], padded[1], padded[3], config)
    inside = _inside(found.points0_px, image0.shape) & _inside(found.points1_px, image1.shape)
    return MatchedPoints(
        *(t[inside].cpu() for t in (found.points0_px, found.points1_px, found.confidence, found.batch))
    )


def _inside(points_px: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    limit = torch.tensor([shape[1] - 1, shape[0] - 1], device=points_px.device)
    return ((points_px >= 0) & (points_px <= limit)).all(-1)


def matcher_available(path: str | Path | None) -> bool:
    """Whether a matcher model is at hand: ``path`` given, or (None) the shipped one installed."""
    return path is not None or shipped_weights(SHIPPED).is_file()


def load_matcher(path: str | Path | None = None, device: str = "cpu") -> tuple[MatcherNet, dict]:
    """The matcher network in ``path`` (None: the shipped model), in eval mode on ``device``, and its
    meta. Raises ModelLoadError for a missing, corrupt or foreign file."""
    if not matcher_available(path):
        raise ModelLoadError(
            f"no {KIND} model is shipped with this installation ({SHIPPED}): train one with "
            "`crossreg train matcher --out matcher2d.pt` and pass it with --weights"
        )
    file = Path(path) if path is not None else shipped_weights(SHIPPED)
    return load_weights(file, KIND, MatcherNetConfig, MatcherNet, device)
