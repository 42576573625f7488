"""The registration QA figure, zoomed to where the images overlap (:mod:`crossreg.qa_views`).

One row per stage: before (identity), after rigid, after deformable (when the deformable stage ran);
in each, per plane, the moving image in amber over the fixed one in grey (fusion), and the fixed
image's edges in cyan on the moving image: after a good registration the edges lie on the moving
image's boundaries. A deformable result adds a row with a grid warped by the field and the field's
Jacobian determinant (blue < 1 < red, green where it folds). The caption gives the numbers: rigid
rotation and translation, largest displacement, folded share of the fixed field of view, confidence.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from crossreg.deformable.stage import DeformableResult
from crossreg.image import Image
from crossreg.qa_views import Stage, ZoomView, jacobian_slice, warped_grid_lines, zoom_box, zoom_views
from crossreg.transform import AffineTransform, Transform
from crossreg.viz import SUMMARY_PT, _save_figure, decorate, scalebar

_AMBER = np.array([1.0, 0.65, 0.1])
_EDGE = np.array([0.0, 0.9, 1.0])
_FOLD = "#00ff00"
_ALPHA = 0.55  # weight of the moving image in the fusion
_PANEL_IN = 2.3
_JACOBIAN_CMAP = mpl.colormaps["RdBu_r"].with_extremes(under=_FOLD, bad="none")


def qa_figure(
    fixed: Image,
    moving: Image,
    transform: Transform,
    deformable: DeformableResult | None = None,
    title: str = "",
    confidence: float | None = None,
    margin_mm: float = 10.0,
) -> Figure:
    """The QA figure of a registration (module docstring); ``transform`` and ``deformable.transform``
    map fixed to moving world points. Views: the smaller field of view in fixed space plus
    ``margin_mm`` (:func:`crossreg.qa_views.zoom_box`), three orthogonal planes through its centre in 3D."""
    stages: list[Stage] = [
        ("before (identity)", AffineTransform.identity(fixed.ndim)),
        ("after rigid", transform),
    ]
    if deformable is not None:
        stages.append(("after deformable", deformable.transform))
    box = zoom_box(fixed, moving, stages[-1][1], margin_mm)
    views = zoom_views(fixed, moving, stages, box)
    nrows = len(stages) + (deformable is not None)
    ratio = max(v.fixed.shape[0] / v.fixed.shape[1] for v in views)
    ncols = 2 * len(views)
    fig = Figure(figsize=(_PANEL_IN * ncols + 0.6, _PANEL_IN * ratio * nrows + 1.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for col, view in enumerate(views):
        plane = f"{view.name}: " if fixed.ndim == 3 else ""
        axes[0, 2 * col].set_title(f"{plane}fusion", fontsize=10)
        axes[0, 2 * col + 1].set_title(f"{plane}fixed edges on moving", fontsize=10)
        for row, moved in enumerate(view.moving):
            _show_fusion(axes[row, 2 * col], view, moved)
            _show_edges(axes[row, 2 * col + 1], view, moved)
        if deformable is not None:
            _show_grid(axes[-1, 2 * col], view, deformable, float(np.ptp(box, axis=0).max()) / 12)
            image = _show_jacobian(axes[-1, 2 * col + 1], view, deformable)
    for row, (label, _) in enumerate(stages):
        axes[row, 0].set_ylabel(label, fontsize=11, fontweight="bold")
    if deformable is not None:
        axes[-1, 0].set_ylabel("deformation", fontsize=11, fontweight="bold")
        fig.colorbar(image, ax=axes[-1, -1], label="det J", shrink=0.8, extend="min")
    chars = int(fig.get_figwidth() * 72 / (0.6 * 12))
    fig.suptitle(textwrap.fill(title, chars), fontsize=12, fontweight="bold")
    fig.supxlabel(
        _caption(transform, deformable, confidence, box, margin_mm, fig.get_figwidth()),
        fontsize=SUMMARY_PT,
        ha="left",
        x=0.01,
    )
    return fig


def save_qa(
    path: str | Path,
    fixed: Image,
    moving: Image,
    transform: Transform,
    deformable: DeformableResult | None = None,
    title: str = "",
    confidence: float | None = None,
    dpi: int = 100,
) -> None:
    """Write :func:`qa_figure` to ``path`` atomically (format from the suffix, PNG by default)."""
    _save_figure(path, qa_figure(fixed, moving, transform, deformable, title, confidence), dpi)


def _show_fusion(ax: Axes, view: ZoomView, moved: np.ndarray) -> None:
    """The moving slice in amber over the fixed one in grey, where the moving image has data."""
    grey = view.fixed[..., None] * np.ones(3)
    inside = ~np.isnan(moved)[..., None]
    tinted = (1 - _ALPHA) * grey + _ALPHA * np.nan_to_num(moved)[..., None] * _AMBER
    ax.imshow(np.clip(np.where(inside, tinted, grey), 0, 1), interpolation="nearest")
    _finish(ax, view)


def _show_edges(ax: Axes, view: ZoomView, moved: np.ndarray) -> None:
    """The moving slice in grey (black outside its field of view) with the fixed edges in cyan."""
    grey = np.nan_to_num(moved)[..., None] * np.ones(3)
    ax.imshow(np.where(view.edges[..., None], _EDGE, grey), interpolation="nearest")
    _finish(ax, view)


def _show_grid(ax: Axes, view: ZoomView, deformable: DeformableResult, step_mm: float) -> None:
    """The fixed slice, dimmed, under a regular grid ``step_mm`` apart moved by the field."""
    ax.imshow(0.6 * view.fixed, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    lines = warped_grid_lines(deformable.transform, view.grid, step_mm)
    ax.add_collection(LineCollection(lines, colors="yellow", linewidths=0.7))
    h, w = view.fixed.shape
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(f"grid {step_mm:.0f} mm, warped", fontsize=9)
    _finish(ax, view)


def _show_jacobian(ax: Axes, view: ZoomView, deformable: DeformableResult) -> mpl.image.AxesImage:
    """The field's Jacobian determinant over the fixed slice: centred on 1, folding (<= 0) green."""
    det = jacobian_slice(deformable.transform, view.grid)
    ax.imshow(view.fixed, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    norm = TwoSlopeNorm(vcenter=1.0, vmin=1e-6, vmax=2.0)
    image = ax.imshow(det, cmap=_JACOBIAN_CMAP, norm=norm, alpha=0.75, interpolation="nearest")
    ax.set_title(f"det J {det.min():.2f} to {det.max():.2f}", fontsize=9)
    _finish(ax, view)
    return image


def _finish(ax: Axes, view: ZoomView) -> None:
    decorate(ax, view.fixed.shape, view.letters, 0)
    scalebar(ax, view.fixed.shape, view.grid.spacing_mm[0])


def _motion(transform: Transform) -> str:
    """Rotation, translation (and scale) of an affine transform; the perspective terms of a homography."""
    if not isinstance(transform, AffineTransform):
        h = transform.matrix
        return f"perspective terms ({h[2, 0]:.2g}, {h[2, 1]:.2g}) /mm"
    vec = ", ".join(f"{v:+.1f}" for v in transform.translation_mm)
    facts = f"rotation {transform.rotation_deg():.1f}°, translation ({vec}) mm"
    if transform.model != "rigid":
        s = np.linalg.svd(transform.matrix, compute_uv=False)
        facts += f", scale {s.min():.3f}–{s.max():.3f}"
    return facts


def _caption(
    transform: Transform,
    deformable: DeformableResult | None,
    confidence: float | None,
    box_mm: np.ndarray,
    margin_mm: float,
    width_in: float,
) -> str:
    """The numbers under the figure, and how to read it, wrapped to its width."""
    sure = "" if confidence is None else f"; confidence {confidence:.2f}"
    lines = [f"{transform.model} T fixed→moving: {_motion(transform)}{sure}"]
    if deformable is not None:
        lines.append(
            f"deformable: max displacement {deformable.max_displacement_mm:.1f} mm, det J ≤ 0 (folding) at "
            f"{100 * deformable.negative_jacobian_fov:.2f}% of the fixed field of view"
        )
    size = " x ".join(f"{v:.0f}" for v in np.ptp(box_mm, axis=0))
    centre = ", ".join(f"{v:.1f}" for v in box_mm.mean(axis=0))
    view = (
        "radiological (patient left on screen right)" if box_mm.shape[1] == 3 else "world +x right, +y down"
    )
    lines.append(
        f"views: the smaller field of view in fixed space + {margin_mm:g} mm ({size} mm around ({centre}) mm "
        f"LPS), {view}; fusion: fixed grey, moving amber; edges: the fixed image's, cyan"
        + ("; det J: blue < 1 < red, green ≤ 0" if deformable is not None else "")
    )
    chars = int(width_in * 72 / (0.6 * SUMMARY_PT))
    return "\n".join(textwrap.fill(line, chars, subsequent_indent="  ") for line in lines)
