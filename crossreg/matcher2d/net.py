"""The 2D matcher's network: a small CNN, aggregated attention on the coarse grid, and coarse-to-fine maps.

Design (after LoFTR / EfficientLoFTR, written for crossreg; sized so that a 640 x 480 pair takes a
fraction of a second on two CPU cores):

- **input** (:func:`structure_input`): each image normalised on its own (median and spread inside its
  field of view), plus its local gradient structure: the gradient magnitude over its local mean
  (contrast-free) and the doubled-angle orientation (the same for a dark-to-bright and a
  bright-to-dark edge). Intensity alone would tie the matcher to a modality; these channels do not;
- **backbone**: a strided stem at 1/2, then one residual block each at 1/4 and 1/8, with GroupNorm (no
  batch statistics that could differ between modalities); the fine map at 1/4 fuses the upsampled
  coarse map. Wide channels only at 1/8, where there are 64 times fewer positions than pixels;
- **attention** (EfficientLoFTR's aggregated attention): ``layers`` alternating self / cross layers on
  the 1/8 grid with sinusoidal positions. Each layer aggregates its queries (a strided depthwise
  convolution) and its keys and values (max pooling) over ``aggregate`` x ``aggregate`` cells, attends
  with softmax attention on those few tokens, upsamples the message and merges it into every cell
  with an MLP, so each cell keeps its own feature. Cells outside a field of view are dropped as keys.

Per 640 x 480 image: about 1.1 GMAC in the backbone and 0.15 GMAC per attention layer; the coarse
similarity of a pair (:func:`crossreg.matcher2d.match.coarse_matches`) adds ``L0 * L1 * C`` MAC
(2.2 G for two 80 x 60 grids at C = 96).

Networks are built from :class:`MatcherNetConfig`, which the weights file stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

COARSE_STRIDE = 8
FINE_STRIDE = 4
INPUT_CHANNELS = 4


@dataclass(frozen=True)
class MatcherNetConfig:
    """Architecture of the matcher network (stored in the weights file)."""

    widths: tuple[int, int, int] = (16, 32, 96)  # channels at 1/2, 1/4 and 1/8 resolution (multiples of 8)
    fine_dim: int = 32  # channels of the fine (1/4) map
    heads: int = 4  # attention heads (divides widths[2])
    layers: int = 4  # attention layers, alternating self and cross
    aggregate: int = 4  # coarse cells per attention token, along each axis

    def __post_init__(self) -> None:
        c = self.widths[2]
        if any(w % 8 for w in self.widths) or c % self.heads or c % 4 or self.aggregate < 1:
            raise ValueError(f"invalid MatcherNetConfig (widths multiples of 8, heads dividing them): {self}")


def structure_input(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(B, 4, H/2, W/2)`` network input of images ``(B, 1, H, W)`` with masks ``(B, 1, H, W)`` bool
    (sizes even): normalised intensity, relative gradient magnitude, and its doubled-angle
    orientation (cos, sin), at half resolution (means of 2 x 2 pixels, which also smooth)."""
    # Quantiles of every 4th pixel along each axis: as good, and 16 times cheaper to sort.
    flat = torch.where(masks, images, torch.nan)[..., ::4, ::4].flatten(1)
    levels = torch.nanquantile(flat, torch.tensor([0.1, 0.5, 0.9], device=flat.device), dim=1).nan_to_num()
    spread = (levels[2] - levels[0]).clamp_min(1e-3).view(-1, 1, 1, 1)
    inside = F.avg_pool2d(masks.float(), 2) > 0.5
    norm = F.avg_pool2d((images - levels[1].view(-1, 1, 1, 1)) / spread, 2)
    padded = F.pad(norm, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    square = gx**2 + gy**2 + 1e-8
    magnitude = square.sqrt()
    local = F.avg_pool2d(magnitude, 7, stride=1, padding=3, count_include_pad=False)
    relative = magnitude / (local + 1e-2)
    weight = (relative / (relative + 0.5)).clamp(max=1) / square  # orientation only where there is an edge
    # cos and sin of twice the gradient angle, without computing the angle
    channels = [norm.clamp(-4, 4), relative.clamp(max=6) / 3, (gx**2 - gy**2) * weight, 2 * gx * gy * weight]
    return torch.cat(channels, 1) * inside


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(8, cout)
        self.skip = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride > 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.skip(x))


class Backbone(nn.Module):
    """Inputs ``(B, 4, H/2, W/2)`` -> coarse ``(B, C, H/8, W/8)`` and fine ``(B, Cf, H/4, W/4)`` maps."""

    def __init__(self, config: MatcherNetConfig) -> None:
        super().__init__()
        c1, c2, c3 = config.widths
        self.stage2 = nn.Sequential(
            nn.Conv2d(INPUT_CHANNELS, c1, 3, 1, 1, bias=False), nn.GroupNorm(8, c1), nn.ReLU()
        )
        self.stage4 = _Block(c1, c2, 2)
        self.stage8 = _Block(c2, c3, 2)
        self.lateral = nn.Conv2d(c3, c2, 1)
        self.fine = nn.Sequential(
            nn.Conv2d(c2, c2, 3, 1, 1),
            nn.GroupNorm(8, c2),
            nn.ReLU(),
            nn.Conv2d(c2, config.fine_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quarter = self.stage4(self.stage2(x))
        coarse = self.stage8(quarter)
        up = F.interpolate(self.lateral(coarse), scale_factor=2.0, mode="bilinear", align_corners=False)
        return coarse, self.fine(quarter + up)


@lru_cache(maxsize=8)
def positions(dim: int, h: int, w: int, device) -> torch.Tensor:
    """``(dim, h, w)`` sinusoidal encodings of the grid positions (x and y, quarter of channels each);
    cached, so never modified in place."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    freq = torch.exp(torch.arange(0, dim // 4, device=device) * (-math.log(1000.0) / (dim // 4)))
    parts = [f(c[..., None].float() * freq) for c in (xs, ys) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, -1).permute(2, 0, 1)


class AggregatedAttentionLayer(nn.Module):
    """One attention layer: grid ``x`` ``(B, C, h, w)`` attends to grid ``source`` ``(B, C, h', w')``
    (itself for self attention), both sides multiples of ``aggregate``, whose aggregated tokens carry
    key mask ``(B, h' * w' / aggregate**2)`` bool; gives ``x`` plus the MLP of [x, upsampled message]."""

    def __init__(self, dim: int, heads: int, aggregate: int) -> None:
        super().__init__()
        self.heads = heads
        self.aggregate = nn.Conv2d(dim, dim, aggregate, aggregate, groups=dim, bias=False)
        self.pool = nn.MaxPool2d(aggregate)
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.merge = nn.Linear(dim, dim, bias=False)
        # The MLP of [x, message]: its first layer is split in two, so that the message's half runs
        # on the aggregated tokens before upsampling (bilinear upsampling commutes with it).
        self.mlp_x, self.mlp_message = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.mlp_out = nn.Linear(dim, dim, bias=False)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, source: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        queries = self.norm1(self.aggregate(x).flatten(2).transpose(1, 2))  # (B, Lq, C)
        keys = self.norm1(self.pool(source).flatten(2).transpose(1, 2))  # (B, Lk, C)
        q, k, v = (
            proj(t).unflatten(-1, (self.heads, -1)).transpose(1, 2)
            for proj, t in ((self.q, queries), (self.k, keys), (self.v, keys))
        )
        # A pair with no valid key would give NaN: let it attend to every token instead.
        keep = key_mask | ~key_mask.any(1, keepdim=True)
        message = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        message = self.mlp_message(self.merge(message.transpose(1, 2).flatten(2)))  # (B, Lq, C)
        small = message.transpose(1, 2).unflatten(-1, (h // self.pool.kernel_size, -1))
        up = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).flatten(2)
        tokens = x.flatten(2).transpose(1, 2)  # (B, h * w, C)
        update = self.mlp_out(F.relu(self.mlp_x(tokens) + up.transpose(1, 2)))
        return x + self.norm2(update).transpose(1, 2).unflatten(-1, (h, w))


class MatcherNet(nn.Module):
    """Backbone and coarse attention: two images in, their coarse and fine feature maps out."""

    def __init__(self, config: MatcherNetConfig = MatcherNetConfig()) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.attention = nn.ModuleList(
            AggregatedAttentionLayer(config.widths[2], config.heads, config.aggregate)
            for _ in range(config.layers)
        )

    def forward(
        self, inputs0: torch.Tensor, inputs1: torch.Tensor, mask0: torch.Tensor, mask1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coarse features ``(B, L0, C)`` and ``(B, L1, C)`` (row-major over the 1/8 grids) and fine maps
        ``(B, Cf, H/4, W/4)`` of network inputs ``(B, 4, H, W)`` (sizes multiples of 8; the two images may
        differ in size) whose coarse-grid masks are ``mask0`` ``(B, L0)`` and ``mask1`` ``(B, L1)`` bool."""
        coarse0, fine0 = self.backbone(inputs0)
        coarse1, fine1 = self.backbone(inputs1)
        (g0, k0), (g1, k1) = self._tokens(coarse0, mask0), self._tokens(coarse1, mask1)
        for k, layer in enumerate(self.attention):
            if k % 2 == 0:
                g0, g1 = layer(g0, g0, k0), layer(g1, g1, k1)
            else:
                g0, g1 = layer(g0, g1, k1), layer(g1, g0, k0)
        f0 = g0[..., : coarse0.shape[-2], : coarse0.shape[-1]].flatten(2).transpose(1, 2)
        f1 = g1[..., : coarse1.shape[-2], : coarse1.shape[-1]].flatten(2).transpose(1, 2)
        return f0, f1, fine0, fine1

    def _tokens(self, coarse: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A coarse map ``(B, C, h, w)`` with positions, padded to multiples of ``aggregate``, and the key
        mask ``(B, L')`` of its aggregated tokens: those with a cell of mask ``(B, h * w)`` inside."""
        a = self.config.aggregate
        h, w = coarse.shape[-2:]
        pad = (0, -w % a, 0, -h % a)
        grid = F.pad(coarse + positions(coarse.shape[1], h, w, coarse.device), pad)
        cells = F.pad(mask.view(-1, 1, h, w).float(), pad)
        return grid, F.max_pool2d(cells, a).flatten(1) > 0.5
