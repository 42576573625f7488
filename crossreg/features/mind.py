"""MIND-SSC: the modality independent neighbourhood descriptor, self-similarity context variant.

Heinrich et al., "Towards realtime multimodal fusion for image-guided interventions using
self-similarity context", MICCAI 2013. Each channel compares two patches of the *same* image that sit
on neighbouring voxels of the centre (pairs of the 2d-neighbourhood that are sqrt(2) apart: 12 in 3D,
4 in 2D), so it describes local structure, not intensity, and survives modality changes.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from crossreg.filters import box_mean


def ssc_pairs(ndim: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Neighbour offset pairs (unit steps) sqrt(2) apart: 12 pairs in 3D, 4 in 2D."""
    steps = []
    for axis in range(ndim):
        for sign in (1, -1):
            s = [0] * ndim
            s[axis] = sign
            steps.append(tuple(s))
    return [(a, b) for a, b in itertools.combinations(steps, 2) if sum((x - y) ** 2 for x, y in zip(a, b)) == 2]


def _shift(x: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    """``x`` ``(*spatial)`` sampled at ``index + offset`` with edge replication."""
    r = max(abs(o) for o in offset)
    pad = [r] * (2 * x.dim())
    padded = F.pad(x[None, None], pad, mode="replicate")[0, 0]
    return padded[tuple(slice(r + o, r + o + n) for o, n in zip(offset, x.shape))]


def mind_ssc(volume: torch.Tensor, dilation_vox: int = 1, patch_radius_vox: int = 1) -> torch.Tensor:
    """Dense MIND-SSC of ``volume`` ``(*spatial)``: ``(P, *spatial)``, P = 12 (3D) or 4 (2D), in [0, 1].

    dilation_vox: neighbour distance in voxels; patch_radius_vox: radius of the compared patches.
    """
    x = volume.float()
    pairs = ssc_pairs(x.dim())
    ssd = torch.stack(
        [
            (_shift(x, tuple(dilation_vox * v for v in a)) - _shift(x, tuple(dilation_vox * v for v in b))) ** 2
            for a, b in pairs
        ]
    )
    ssd = box_mean(ssd, patch_radius_vox)
    ssd = ssd - ssd.min(dim=0, keepdim=True).values
    variance = ssd.mean(dim=0, keepdim=True)
    mean_var = variance.mean()
    variance = variance.clamp(min=1e-3 * mean_var.item() + 1e-12, max=1e3 * mean_var.item() + 1e-12)
    mind = torch.exp(-ssd / variance)
    return mind / mind.max(dim=0, keepdim=True).values
