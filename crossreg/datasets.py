"""The real images shipped with crossreg: the ICBM/MNI152 2009a template (T1, grey/white matter maps).

The files sit in ``crossreg/data/`` (licence in NOTICE.txt), found beside this module so they work
from a source checkout and an installed wheel alike. Grids are LPS with direction
``diag(-1, -1, 1)`` (RAS-stored NIfTI); the T1 holds the skull-stripped brain, intensities 0-255.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from crossreg.errors import ImageReadError
from crossreg.image import Image
from crossreg.imageio import load
from crossreg.synth.geometry import Axis, extract_slice
from crossreg.synth.modality import as_probability

Kind = Literal["t1", "gm", "wm"]
_SHIPPED = (("t1", 1), ("t1", 2), ("gm", 2), ("wm", 2))


def mni152_path(kind: Kind = "t1", resolution_mm: int = 2) -> Path:
    """Path of a shipped MNI152 file: ``t1`` at 1 or 2 mm, ``gm`` / ``wm`` probability maps at 2 mm."""
    if (kind, resolution_mm) not in _SHIPPED:
        options = ", ".join(f"{k} {r} mm" for k, r in _SHIPPED)
        raise ImageReadError(f"no shipped MNI152 {kind} at {resolution_mm} mm; available: {options}")
    # A plain path, not importlib.resources.files("crossreg"): SimpleITK needs a real file anyway, and
    # files() fails when crossreg resolves as a namespace package (a stale editable install does that).
    path = Path(__file__).resolve().parent / "data" / f"mni152_{kind}_{resolution_mm}mm.nii.gz"
    if not path.is_file():
        raise ImageReadError(f"{path}: shipped data file is missing; reinstall crossreg")
    return path


def mni152_t1(resolution_mm: int = 2) -> Image:
    """The MNI152 2009a T1-weighted brain (skull-stripped, 0-255) at 1 or 2 mm, 3D."""
    return load(mni152_path("t1", resolution_mm))


def mni152_tissues(resolution_mm: int = 2) -> dict[str, Image]:
    """Grey and white matter probability maps in [0, 1] (the files store 0-255), keys ``gm``, ``wm``.

    On the same grid as ``mni152_t1(resolution_mm)``; shipped at 2 mm only.
    """
    return {k: as_probability(load(mni152_path(k, resolution_mm))) for k in ("gm", "wm")}


def mni152_slice(resolution_mm: int = 1, axis: Axis = "axial", index: int | None = None) -> Image:
    """One slice of the MNI152 T1 as a 2D image in its world plane (middle slice if ``index`` is None).

    The 2D spacing, origin and direction are the in-plane part of the 3D grid (see
    :func:`crossreg.synth.geometry.extract_slice`); e.g. an axial slice has world coordinates (x, y).
    """
    return extract_slice(mni152_t1(resolution_mm), axis, index)
