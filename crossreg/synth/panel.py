"""The documentation picture of synthetic ultrasound (``docs/img/synth_us_examples.png``), reproducible.

Three examples from the shipped MNI152 brain: two planes through the axis of one 3D cone, and a 2D
fan on an axial slice. Each column shows the T1 in the plane of the beam and the simulated B-mode,
displayed as an ultrasound screen shows it: probe at the top, depth downwards, in millimetres.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crossreg import datasets
from crossreg.image import Grid, Image, robust_normalize
from crossreg.outputs import atomic_write
from crossreg.resample import grid_points_mm, resample
from crossreg.synth.beam import beam_grid, probe_pose_on_surface
from crossreg.synth.geometry import extract_slice
from crossreg.synth.ultrasound import UltrasoundConfig, beam_for, simulate_ultrasound

DISPLAY_MM = 0.4  # pixel size of the displayed planes
LESION_RADIUS_MM = 5.0


def _ball(image: Image, center_mm: np.ndarray, radius_mm: float) -> Image:
    """A [0, 1] map of a ball on ``image``'s grid, with a one-voxel soft edge."""
    points = grid_points_mm(image.grid).numpy()
    distance = np.linalg.norm(points - center_mm, axis=-1)
    return image.with_array(np.clip(radius_mm - distance + 0.5, 0.0, 1.0))


def _views(
    t1: Image,
    tissues: dict[str, Image],
    config: UltrasoundConfig,
    seed: int,
    lateral_axes: tuple[int, ...],
    lesion_depth_mm: float | None = None,
) -> list[tuple[Image, Image]]:
    """(T1, ultrasound) pairs on beam-aligned planes of one probe pose, one per lateral axis; with a
    hyperechoic lesion on the beam axis at ``lesion_depth_mm`` if given."""
    apex, direction = probe_pose_on_surface(t1, seed)
    beam = beam_for(config, apex, direction, t1.grid)
    if lesion_depth_mm is not None:
        tissues = {**tissues, "lesion": _ball(t1, apex + lesion_depth_mm * direction, LESION_RADIUS_MM)}
    views = []
    for axis in lateral_axes:
        plane = beam_grid(beam, DISPLAY_MM, lateral_axis=axis, thin=True)
        us = simulate_ultrasound(t1, tissues, config, apex, direction, seed, grid=plane)
        mri = resample(robust_normalize(t1), plane)
        # The T1 outside the field of view is dimmed, so the eye compares what the probe sees.
        views.append((mri.with_array(mri.array * np.where(us.valid_mask(), 1.0, 0.35)), us))
    return views


def _show(ax, image: Image, grid: Grid, title: str = "") -> None:
    """One plane on ``ax`` with millimetre axes: lateral across, depth down from the apex."""
    array = np.squeeze(np.where(image.valid_mask(), image.array, 0.0))
    half = (grid.shape[-1] - 1) * grid.spacing_mm[0] / 2.0
    depth = (grid.shape[-2] - 1) * grid.spacing_mm[1]
    ax.imshow(array, cmap="gray", vmin=0.0, vmax=1.0, extent=(-half, half, depth, 0.0))
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)


def example_panel(path: str | Path, seed: int = 0) -> None:
    """Write the three-example figure (PNG) to ``path`` atomically; ``seed`` picks poses and speckle."""
    config = replace(UltrasoundConfig(), beam_step_mm=0.5)
    t1 = datasets.mni152_t1(1)
    tissues = datasets.mni152_tissues(2)
    views = _views(t1, tissues, config, seed, (0, 1), lesion_depth_mm=28.0)
    axial = datasets.mni152_slice(1, "axial", 88)
    axial_maps = {k: extract_slice(v, "axial", 44) for k, v in tissues.items()}
    fan = replace(config, beam_step_mm=0.3, opening_deg=80.0)
    views += _views(axial, axial_maps, fan, seed + 1, (0,))
    titles = ("3D cone: plane 1", "3D cone: plane 2 (orthogonal)", "2D fan (axial slice)")
    fig = Figure(figsize=(12, 7.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    for col, ((mri, us), title) in enumerate(zip(views, titles, strict=True)):
        _show(axes[0, col], mri, mri.grid, f"T1 in the beam plane — {title}")
        _show(axes[1, col], us, us.grid, "synthetic ultrasound")
        axes[1, col].set_xlabel("lateral (mm)", fontsize=8)
    for row in axes:
        row[0].set_ylabel("depth (mm)", fontsize=8)
    fig.suptitle(f"crossreg synthetic intraoperative ultrasound (MNI152, seed {seed})", fontsize=12)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png", facecolor="white"))
