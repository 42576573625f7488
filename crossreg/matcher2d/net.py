"""The 2D matcher's network: a small CNN, linear attention on the coarse grid, and coarse-to-fine heads.

Design (after LoFTR / EfficientLoFTR, written for crossreg):

- **input** (:func:`structure_input`): each image normalised on its own (median and spread inside its
  field of view), plus its local gradient structure: the gradient magnitude over its local mean
  (contrast-free) and the doubled-angle orientation (the same for a dark-to-bright and a
  bright-to-dark edge). Intensity alone would tie the matcher to a modality; these channels do not;
- **backbone**: residual blocks with GroupNorm (no batch statistics that could differ between
  modalities) at 1/2, 1/4 and 1/8 resolution; the fine map at 1/4 fuses the upsampled coarse map;
- **attention**: ``layers`` alternating self / cross layers of linear attention (elu + 1 kernel) on
  the 1/8 grid with sinusoidal positions, so memory grows linearly with the image area; pixels outside
  a field of view are dropped as keys.

Networks are built from :class:`MatcherNetConfig`, which the weights file stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crossreg.filters import box_mean, gaussian_blur

COARSE_STRIDE = 8
FINE_STRIDE = 4
INPUT_CHANNELS = 4


@dataclass(frozen=True)
class MatcherNetConfig:
    """Architecture of the matcher network (stored in the weights file)."""

    widths: tuple[int, int, int] = (16, 48, 128)  # channels at 1/2, 1/4 and 1/8 resolution
    fine_dim: int = 48  # channels of the fine (1/4) map
    heads: int = 4  # attention heads (divides widths[2])
    layers: int = 4  # attention layers, alternating self and cross


def structure_input(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(B, 4, H, W)`` network input of images ``(B, 1, H, W)`` with masks ``(B, 1, H, W)`` bool:
    normalised intensity, relative gradient magnitude, and its doubled-angle orientation (cos, sin)."""
    # Quantiles of every 4th pixel along each axis: as good, and 16 times cheaper to sort.
    flat = torch.where(masks, images, torch.nan)[..., ::4, ::4].flatten(1)
    median = torch.nanquantile(flat, 0.5, dim=1).nan_to_num(0.0).view(-1, 1, 1, 1)
    spread = torch.nanquantile(flat, 0.9, dim=1) - torch.nanquantile(flat, 0.1, dim=1)
    norm = (images - median) / spread.nan_to_num(1.0).clamp_min(1e-3).view(-1, 1, 1, 1)
    b, _, h, w = images.shape
    smooth = gaussian_blur(norm.reshape(b, h, w), 1.0)
    padded = F.pad(smooth[:, None], (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    magnitude = torch.sqrt(gx**2 + gy**2 + 1e-8)
    relative = magnitude / (box_mean(magnitude.reshape(b, h, w), 7)[:, None] + 1e-2)
    square = magnitude**2  # cos and sin of twice the gradient angle, without computing the angle
    channels = [norm.clamp(-4, 4), relative.clamp(max=6) / 3, (gx**2 - gy**2) / square, 2 * gx * gy / square]
    weight = (relative / (relative + 0.5)).clamp(max=1)  # orientation only where there is an edge
    channels[2:] = [c * weight for c in channels[2:]]
    return torch.cat(channels, 1) * masks


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
    """``(B, 4, H, W)`` -> coarse ``(B, C, H/8, W/8)`` and fine ``(B, Cf, H/4, W/4)`` maps."""

    def __init__(self, config: MatcherNetConfig) -> None:
        super().__init__()
        c1, c2, c3 = config.widths
        # One block at 1/2 and 1/4: a CPU matches a 640 x 480 pair in well under a second.
        self.stage2 = _Block(INPUT_CHANNELS, c1, 2)
        self.stage4 = _Block(c1, c2, 2)
        self.stage8 = nn.Sequential(_Block(c2, c3, 2), _Block(c3, c3, 1))
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


def positions(dim: int, h: int, w: int, device) -> torch.Tensor:
    """``(h * w, dim)`` sinusoidal encodings of the grid positions (x and y, quarter of channels each)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    freq = torch.exp(torch.arange(0, dim // 4, device=device) * (-math.log(1000.0) / (dim // 4)))
    parts = [f(c.reshape(-1, 1).float() * freq) for c in (xs, ys) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, 1)


class LinearAttentionLayer(nn.Module):
    """One attention layer: ``x`` ``(B, L, C)`` attends to ``source`` ``(B, S, C)`` (itself for self
    attention) with key mask ``(B, S)`` bool; linear attention, then an MLP on [x, message]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.merge = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False)
        )
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, source: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, n_q, c = x.shape
        head = c // self.heads
        q = F.elu(self.q(x).view(b, n_q, self.heads, head)) + 1
        k = (F.elu(self.k(source).view(b, -1, self.heads, head)) + 1) * key_mask[:, :, None, None]
        v = self.v(source).view(b, -1, self.heads, head) / max(source.shape[1], 1)
        kv = torch.einsum("bshd,bshv->bhdv", k, v)
        norm = 1 / (torch.einsum("blhd,bhd->blh", q, k.sum(1)) + 1e-6)
        message = torch.einsum("blhd,bhdv,blh->blhv", q, kv, norm) * source.shape[1]
        message = self.norm1(self.merge(message.reshape(b, n_q, c)))
        return x + self.norm2(self.mlp(torch.cat([x, message], -1)))


class MatcherNet(nn.Module):
    """Backbone and coarse attention: two images in, their coarse and fine feature maps out."""

    def __init__(self, config: MatcherNetConfig = MatcherNetConfig()) -> None:
        super().__init__()
        if config.widths[2] % config.heads or config.widths[2] % 4:
            raise ValueError(f"MatcherNetConfig: widths[2] must divide by heads and by 4: {config}")
        self.config = config
        self.backbone = Backbone(config)
        self.attention = nn.ModuleList(
            LinearAttentionLayer(config.widths[2], config.heads) for _ in range(config.layers)
        )

    def forward(
        self, inputs0: torch.Tensor, inputs1: torch.Tensor, mask0: torch.Tensor, mask1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coarse features ``(B, L0, C)`` and ``(B, L1, C)`` (row-major over the 1/8 grids) and fine maps
        ``(B, Cf, H/4, W/4)`` of network inputs ``(B, 4, H, W)`` (sizes multiples of 8; the two images may
        differ in size) whose coarse-grid masks are ``mask0`` ``(B, L0)`` and ``mask1`` ``(B, L1)`` bool."""
        coarse0, fine0 = self.backbone(inputs0)
        coarse1, fine1 = self.backbone(inputs1)
        c = coarse0.shape[1]
        f0 = coarse0.flatten(2).transpose(1, 2) + positions(c, *coarse0.shape[-2:], coarse0.device)
        f1 = coarse1.flatten(2).transpose(1, 2) + positions(c, *coarse1.shape[-2:], coarse1.device)
        for k, layer in enumerate(self.attention):
            if k % 2 == 0:
                f0, f1 = layer(f0, f0, mask0), layer(f1, f1, mask1)
            else:
                f0, f1 = layer(f0, f1, mask1), layer(f1, f0, mask0)
        return f0, f1, fine0, fine1
