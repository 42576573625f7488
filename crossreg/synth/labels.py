"""Tissue classes of a whole head on the template: the labels synthetic subjects are drawn from.

From a skull-stripped T1 (the shipped MNI152, as :func:`crossreg.synth.modality.ct_like` assumes too)
and its grey/white-matter probability maps, five probabilities per voxel that sum to one:

- **brain mask** ``B``: the T1's field of view (:func:`crossreg.image.fov_mask`: smoothed signal above
  2 % of its 99th percentile) or GM + WM > 0.5, holes filled. The dark ventricles lie inside it (the
  smoothing closes them), and so does a rim of a few mm beyond the GM/WM maps: sulcal CSF.
  ``b`` is ``B`` with a one-voxel linear partial-volume edge, from the signed distance ``d`` (mm,
  positive outside) to its surface.
- ``gm``, ``wm``: the given maps, cut to ``b`` (``gm <= b``, ``wm <= b - gm``).
- ``csf``: inside the brain but neither GM nor WM (``b - gm - wm``: ventricles, sulci, cisterns; on
  the MNI152 where the T1 is dark), plus the first ``csf_gap_mm`` outside ``B``
  (the subarachnoid space under the skull).
- ``nonbrain``: skull and scalp, the shell from ``csf_gap_mm`` to ``csf_gap_mm + shell_mm`` outside
  ``B``. A skull-stripped T1 has no signal there, so the shell is drawn by distance, as in ``ct_like``.
- ``background``: air, the rest.

The outside bands share ``1 - b`` through linear ramps one voxel wide, so the classes sum to one
exactly. The grid is the template's enlarged by ``pad_mm`` (the MNI152 brain touches its grid):
same spacing and direction, so template world points keep their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from crossreg.errors import InvalidConfigError, InvalidImageError
from crossreg.image import Image, fov_mask
from crossreg.imageio import to_sitk
from crossreg.resample import on_grid
from crossreg.synth.geometry import pad

CLASSES = ("background", "csf", "gm", "wm", "nonbrain")


@dataclass(frozen=True)
class LabelConfig:
    """Layers outside the brain mask and the grid around them (:func:`head_labels`)."""

    csf_gap_mm: float = 1.0  # CSF between the brain mask and the skull, mm (0-5; the mask has a rim too)
    shell_mm: float = 10.0  # skull + scalp thickness, mm (2-20)
    pad_mm: float = 16.0  # margin added to the template grid, mm; must exceed csf_gap_mm + shell_mm

    def __post_init__(self) -> None:
        if self.csf_gap_mm < 0 or self.shell_mm <= 0:
            raise InvalidConfigError(f"LabelConfig needs csf_gap_mm >= 0 and shell_mm > 0: {self}")
        if self.pad_mm <= self.csf_gap_mm + self.shell_mm:
            raise InvalidConfigError(
                f"LabelConfig: pad_mm {self.pad_mm:g} must exceed csf_gap_mm + shell_mm "
                f"({self.csf_gap_mm + self.shell_mm:g}) or the skull is cut off by the grid"
            )


def signed_distance_mm(image: Image, mask: np.ndarray) -> np.ndarray:
    """Signed distance (mm) of each voxel centre to the surface of ``mask``: positive outside."""
    itk = sitk.Cast(to_sitk(image.with_array(mask.astype(np.float32))) > 0.5, sitk.sitkUInt8)
    dist = sitk.SignedMaurerDistanceMap(
        itk, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return sitk.GetArrayFromImage(dist).astype(np.float32)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every cavity not connected to the array border filled."""
    filled = sitk.BinaryFillhole(sitk.GetImageFromArray(mask.astype(np.uint8)))
    return sitk.GetArrayFromImage(filled) > 0


def head_labels(
    template: Image, tissues: dict[str, Image], config: LabelConfig = LabelConfig()
) -> dict[str, Image]:
    """The five :data:`CLASSES` probability maps on the template grid padded by ``config.pad_mm``.

    template: skull-stripped T1. tissues: ``gm`` and ``wm`` probability maps in [0, 1] (any grid).
    Each map is an Image of the padded grid's shape; they sum to 1 at every voxel.
    """
    missing = {"gm", "wm"} - set(tissues)
    if missing:
        raise InvalidImageError(
            f"tissue maps {sorted(missing)} missing; give gm and wm (datasets.mni152_tissues)"
        )
    big = pad(template, config.pad_mm)
    gm, wm = (np.clip(on_grid(tissues[k], big.grid), 0.0, None) for k in ("gm", "wm"))
    if max(gm.max(), wm.max()) > 1.001:
        raise InvalidImageError("tissue maps must be probabilities in [0, 1]; divide 0-255 maps by 255")
    brain = _fill_holes(fov_mask(big) | (gm + wm > 0.5))
    d = signed_distance_mm(big, brain)
    h = min(big.spacing_mm)

    def ramp(at_mm: float) -> np.ndarray:  # 0 inside, 1 outside the surface ``d == at_mm``
        return np.clip(0.5 + (d - at_mm) / h, 0.0, 1.0)

    b = 1.0 - ramp(0.0)
    gm = np.minimum(gm, b)
    wm = np.minimum(wm, b - gm)
    gap, shell = ramp(config.csf_gap_mm), ramp(config.csf_gap_mm + config.shell_mm)
    rest = 1.0 - b
    maps = {
        "background": rest * shell,
        "csf": b - gm - wm + rest * (1.0 - gap),
        "gm": gm,
        "wm": wm,
        "nonbrain": rest * (gap - shell),
    }
    return {k: big.with_array(maps[k]) for k in CLASSES}
