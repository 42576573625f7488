"""Smooth random elastic warps in world millimetres: new anatomies for training, brain-shift-like
deformations with exact point correspondences.

A warp is a displacement field ``u`` (world mm) on a coarse axis-aligned control grid, linearly
interpolated. :meth:`ElasticWarp.warp` gives ``W(x) = I(x + u(x))``, so a point ``p`` of the warped
image shows what the original shows at :meth:`ElasticWarp.apply` ``(p) = p + u(p)``: the same
direction as crossreg's transforms (warped/fixed points -> original/moving points).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crossreg.filters import gaussian_blur
from crossreg.image import Grid, Image, axis_aligned_grid
from crossreg.resample import grid_points_mm, sample_world


@dataclass(frozen=True, eq=False)
class ElasticWarp:
    """Displacements ``displacement_mm (d, *grid.shape)`` (world x, y, z components) on ``grid``."""

    grid: Grid
    displacement_mm: np.ndarray

    def apply(self, points_mm: np.ndarray) -> np.ndarray:
        """``p + u(p)`` for world points ``(N, d)``; ``u`` is zero outside the control grid."""
        pts = torch.as_tensor(np.asarray(points_mm, float), dtype=torch.float64)
        field = torch.from_numpy(self.displacement_mm).double()
        return (pts + sample_world(field, self.grid, pts).T).numpy()

    def warp(self, image: Image) -> Image:
        """``image`` pulled through the warp on its own grid: ``W(x) = image(x + u(x))``, mask alike."""
        points = grid_points_mm(image.grid).double()
        moved = torch.from_numpy(self.apply(points.reshape(-1, image.ndim).numpy())).reshape(points.shape)
        valid = image.valid_mask().astype(np.float32)
        stacked = torch.from_numpy(np.stack([np.asarray(image.array, np.float32), valid])).double()
        values = sample_world(stacked, image.grid, moved)
        mask = None if image.mask is None else values[1].numpy() > 0.999
        return Image(values[0].float().numpy(), image.grid, mask, image.source)


def random_elastic(
    image: Image, max_displacement_mm: float, control_spacing_mm: float = 20.0, seed: int = 0
) -> ElasticWarp:
    """A smooth random warp over ``image`` whose largest displacement is ``max_displacement_mm``.

    Gaussian noise on a control grid of ``control_spacing_mm`` is smoothed over one control spacing,
    so displacements vary over a few centimetres, as between brains or with brain shift.
    """
    control = axis_aligned_grid(image.grid.corners_mm(), control_spacing_mm / 4.0)
    control = Grid(
        tuple(n + 8 for n in control.shape),  # margin: the field stays defined just outside the image
        control.spacing_mm,
        tuple(np.asarray(control.origin_mm) - 4.0 * np.asarray(control.spacing_mm)),
        control.direction,
    )
    generator = torch.Generator().manual_seed(int(seed))
    # Noise on a grid 3 sigma larger on every side, blurred, then cut back: a stationary field,
    # with no edge effect of the blur's padding.
    blur_vox, cut = 4.0, 12
    noise = torch.randn((image.ndim, *(n + 2 * cut for n in control.shape)), generator=generator)
    inner = (slice(None), *(slice(cut, -cut),) * image.ndim)
    smooth = gaussian_blur(noise, (blur_vox,) * image.ndim)[inner].double()
    largest = smooth.norm(dim=0).max().clamp_min(1e-12)
    return ElasticWarp(control, (smooth * (max_displacement_mm / largest)).numpy())
