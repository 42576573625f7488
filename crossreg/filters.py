"""Dimension-generic torch filters on ``(C, *spatial)`` tensors (2D or 3D), sizes in voxels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _conv_along(x: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    """1D convolution of ``x`` ``(C, *spatial)`` along spatial ``axis`` with replicate padding, by a
    ``(2r+1,)`` CPU kernel: on a CPU a weighted sum of the padded array's shifted views (a grouped
    conv3d is several times slower there), on a GPU a grouped convolution."""
    nd = x.dim() - 1
    r = kernel.numel() // 2
    pad = [0, 0] * nd
    pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = r
    padded = F.pad(x[None], pad, mode="replicate")[0]
    if x.device.type != "cpu":  # on a GPU one grouped convolution beats a launch per tap
        shape = [kernel.numel() if a == axis else 1 for a in range(nd)]
        weight = kernel.to(x.device, x.dtype).reshape(1, 1, *shape).expand(x.shape[0], 1, *shape).contiguous()
        conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        return conv(padded[None], weight, groups=x.shape[0])[0]
    weights, n = kernel.tolist(), x.shape[axis + 1]
    out = padded.narrow(axis + 1, 0, n) * weights[0]
    for shift, weight in enumerate(weights[1:], start=1):  # over the kernel's taps, not the voxels
        out.add_(padded.narrow(axis + 1, shift, n), alpha=weight)
    return out


def gaussian_kernel(sigma_vox: float, truncate: float = 3.0) -> torch.Tensor:
    """Normalised 1D Gaussian, ``(2r+1,)``."""
    r = max(1, math.ceil(truncate * sigma_vox))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / max(sigma_vox, 1e-6)) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma_vox: float | tuple[float, ...]) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(C, *spatial)``; ``sigma_vox`` per spatial axis or scalar."""
    nd = x.dim() - 1
    sig = (sigma_vox,) * nd if isinstance(sigma_vox, (int, float)) else tuple(sigma_vox)
    for axis, s in enumerate(sig):
        if s > 0:
            x = _conv_along(x, gaussian_kernel(s), axis)
    return x


def box_mean(x: torch.Tensor, radius_vox: int) -> torch.Tensor:
    """Mean over a ``(2r+1)^d`` box around each voxel, ``(C, *spatial)``."""
    if radius_vox <= 0:
        return x
    k = torch.full((2 * radius_vox + 1,), 1.0 / (2 * radius_vox + 1))
    for axis in range(x.dim() - 1):
        x = _conv_along(x, k, axis)
    return x


def dilate(mask: torch.Tensor, radius_vox: int) -> torch.Tensor:
    """Binary dilation of a bool ``(*spatial)`` mask by a box of radius ``radius_vox``."""
    if radius_vox <= 0:
        return mask
    pool = F.max_pool3d if mask.dim() == 3 else F.max_pool2d
    x = mask[None, None].float()
    # A box maximum is separable: one pass per axis costs 2r+1 per voxel, not (2r+1)^d.
    for axis in range(mask.dim()):
        size = tuple(2 * radius_vox + 1 if k == axis else 1 for k in range(mask.dim()))
        x = pool(x, size, stride=1, padding=tuple(radius_vox if k == axis else 0 for k in range(mask.dim())))
    return x[0, 0] > 0.5


def erode(mask: torch.Tensor, radius_vox: int) -> torch.Tensor:
    """Binary erosion of a bool ``(*spatial)`` mask; outside the array counts as background."""
    if radius_vox <= 0:
        return mask
    padded = F.pad(mask[None, None].float(), [radius_vox] * (2 * mask.dim()), value=0.0)[0, 0]
    return ~dilate(padded < 0.5, radius_vox)[(slice(radius_vox, -radius_vox),) * mask.dim()]
