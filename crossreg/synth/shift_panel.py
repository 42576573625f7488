"""The documentation picture of synthetic brain shift (``docs/img/synth_shift_examples.png``),
reproducible: ``crossreg synth shift-panel``.

Two cases from the shipped MNI152 brain (2 mm), each on the sagittal plane through its cavity or its
largest displacement:
an ultrasound case with a sag and a resection cavity, and a CT case with a soft-tissue deformation.
Images of the moving modality are shown with the true rigid motion undone, so what is left is the
shift; landmark arrows go from each fixed landmark ``p`` towards its tissue's place ``S(p)`` (drawn
three times as long). CT is shown in a brain window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crossreg import datasets
from crossreg.image import Image, robust_normalize
from crossreg.outputs import atomic_write
from crossreg.resample import grid_points_mm, resample
from crossreg.synth.cases import Case, make_case
from crossreg.synth.intraop import shifted_anatomy

NEAR_PLANE_MM = 6.0  # landmarks this close to the plane are drawn
ARROW_SCALE = 3.0  # landmark arrows are drawn this many times their length
CT_WINDOW_HU = (0.0, 80.0)  # brain window


def _sagittal(image: Image, x_index: int) -> np.ndarray:
    """The sagittal plane ``x_index`` of a 3D image, ``(z, y)`` with the top of the head up."""
    return np.asarray(image.array[:, :, x_index])


def _arrows(ax, case: Case, x_index: int) -> None:
    """Arrows from fixed landmarks near the plane to where their tissue went, in voxel coordinates."""
    grid = case.fixed.grid
    start = grid.world_to_index(case.landmarks_fixed_mm)
    end = grid.world_to_index(case.shift.apply(case.landmarks_fixed_mm))
    near = np.abs(start[:, 0] - x_index) * grid.spacing_mm[0] < NEAR_PLANE_MM
    ax.plot(start[near, 1], start[near, 2], "r.", ms=5)
    tip = start + ARROW_SCALE * (end - start)
    for a, b in zip(start[near], tip[near], strict=True):
        ax.annotate("", (b[1], b[2]), (a[1], a[2]), arrowprops={"arrowstyle": "->", "color": "yellow"})


def _row(axes, case: Case, tissues: dict[str, Image], label: str) -> None:
    shift = case.shift
    points = grid_points_mm(case.fixed.grid, dtype=torch.float64).reshape(-1, 3).numpy()
    moved = np.linalg.norm(shift.displacement(points), axis=1)
    site = shift.cavity_center_mm if shift.cavity_center_mm is not None else points[np.argmax(moved)]
    x_index = round(case.fixed.grid.world_to_index(site[None])[0, 0])
    moved = moved.reshape(case.fixed.array.shape)
    seen = resample(case.moving, case.fixed.grid, case.true_transform.linear)
    if case.kind == "ct":
        seen = seen.with_array(np.clip(seen.array, *CT_WINDOW_HU), seen.mask)
    anatomy, _ = shifted_anatomy(case.fixed, tissues, shift, ultrasound=case.kind == "us")
    panels = [
        (robust_normalize(case.fixed), "gray", f"preoperative T1, landmark shifts x{ARROW_SCALE:g}"),
        (robust_normalize(anatomy), "gray", "tissue after the shift"),
        (robust_normalize(seen), "gray", f"{label}, rigid motion undone"),
    ]
    for ax, (image, cmap, title) in zip(axes, panels, strict=False):
        ax.imshow(_sagittal(image, x_index), cmap=cmap, origin="lower")
        ax.set_title(title, fontsize=9)
    _arrows(axes[0], case, x_index)
    shown = axes[3].imshow(_sagittal(case.fixed.with_array(moved), x_index), cmap="viridis", origin="lower")
    axes[3].set_title(f"|displacement| (mm): {', '.join(shift.magnitudes_mm)}", fontsize=9)
    axes[3].figure.colorbar(shown, ax=axes[3], shrink=0.8)
    for ax in axes:
        ax.set_axis_off()


def shift_panel(path: str | Path, seed: int = 0) -> None:
    """Write the two-case figure (PNG) to ``path`` atomically; ``seed`` picks both cases."""
    t1, tissues = datasets.mni152_t1(2), datasets.mni152_tissues(2)
    us = make_case(t1, "us", tissues=tissues, seed=seed, shift=("sag", "resect"))
    ct = make_case(t1, "ct", tissues=tissues, seed=seed, shift=("soft",))
    fig = Figure(figsize=(14, 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4)
    _row(axes[0], us, tissues, "ultrasound at the craniotomy")
    _row(axes[1], ct, tissues, "CT-like")
    fig.suptitle(f"crossreg synthetic brain shift and soft-tissue deformation (MNI152, seed {seed})")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png", facecolor="white"))
