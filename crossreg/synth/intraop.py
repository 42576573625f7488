"""The intraoperative anatomy after a tissue shift (:mod:`crossreg.synth.brainshift`): the preoperative
T1 and its tissue maps pulled through the shift, and the resection cavity filled with fluid.

Modalities are then synthesised from these as from any T1 (:mod:`crossreg.synth.modality`,
:mod:`crossreg.synth.ultrasound`): the fluid is CSF to them (no grey or white matter, the T1 as dark
as CSF), so it is bright on T2, near water on CT and anechoic on ultrasound; the bright rim some
cavities show on ultrasound (blood, haemostatic material) is a ``lesion`` map, hyperechoic there.
"""

from __future__ import annotations

import numpy as np
import torch

from crossreg.errors import EmptyRegionError
from crossreg.filters import erode
from crossreg.image import Grid, Image, fov_mask
from crossreg.resample import grid_points_mm
from crossreg.synth.brainshift import Shift


def _ball(grid: Grid, center_mm: np.ndarray, inner_mm: float, outer_mm: float) -> np.ndarray:
    """Fraction ``grid.shape`` of each voxel between ``inner_mm`` and ``outer_mm`` from ``center_mm``
    (a one-voxel partial-volume edge)."""
    dist = np.linalg.norm(grid_points_mm(grid, dtype=torch.float64).numpy() - center_mm, axis=-1)
    h = min(grid.spacing_mm)
    return np.clip((outer_mm - dist) / h + 0.5, 0.0, 1.0) * np.clip((dist - inner_mm) / h + 0.5, 0.0, 1.0)


def _fluid_level(image: Image) -> float:
    """A T1's value for fluid: its 2nd percentile away from the head's edge (where partial volume
    with the background is darker still), i.e. CSF, the darkest tissue on a T1."""
    interior = erode(torch.from_numpy(fov_mask(image)), 3).numpy()
    if not interior.any():
        raise EmptyRegionError(
            f"{image.source or 'image'}: no head interior to take the fluid's intensity from"
        )
    return float(np.percentile(image.array[interior], 2.0))


def shifted_anatomy(
    image: Image, tissues: dict[str, Image] | None, shift: Shift, ultrasound: bool = False
) -> tuple[Image, dict[str, Image] | None]:
    """The intraoperative anatomy: ``image`` and its tissue maps (``gm``, ``wm``; any grid) pulled
    through the shift, the cavity (if any) filled with fluid: the T1 as dark as CSF, no grey or white
    matter. With ``ultrasound`` and a rim, a ``lesion`` map (hyperechoic, see
    :func:`crossreg.synth.ultrasound.tissue_volumes`) lines the cavity wall."""
    moved = shift.warp(image)
    maps = None if tissues is None else {k: shift.warp(v) for k, v in tissues.items()}
    c, r = shift.cavity_center_mm, shift.cavity_radius_mm
    if c is None:
        return moved, maps
    fluid_level = _fluid_level(image)
    fluid = _ball(moved.grid, c, -np.inf, r)
    moved = moved.with_array(moved.array * (1.0 - fluid) + fluid_level * fluid, moved.mask)
    if maps is not None:
        maps = {
            k: v.with_array(v.array * (1.0 - _ball(v.grid, c, -np.inf, r)), v.mask) for k, v in maps.items()
        }
    if ultrasound and shift.rim_mm > 0:
        rim = moved.with_array(_ball(moved.grid, c, r, r + shift.rim_mm), None)
        maps = {**(maps or {}), "lesion": rim}
    return moved, maps
