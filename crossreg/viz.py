"""Slices for QA figures in one display convention, and the landmark QA figure (the registration's is
:mod:`crossreg.qa_figure`).

Display convention: radiological, as 3D Slicer and ITK-SNAP show it. Axial and coronal slices have
the patient's Left on the screen's right; axial slices have Anterior at the top; coronal and sagittal
slices have Superior at the top; sagittal slices have Anterior on the left. Every slice is resampled
from world space onto an isotropic grid whose axes are world (LPS) axes, so flipped, oblique and
anisotropic images all display the same way and with their physical aspect. 2D images show world +x
to the right and +y down. Only matplotlib's object API is used (no pyplot state).
"""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crossreg.image import Grid, Image, axis_aligned_grid, robust_normalize
from crossreg.outputs import atomic_write
from crossreg.resample import resample
from crossreg.transform import Transform

if TYPE_CHECKING:
    from crossreg.locate import Located

Matches = tuple[np.ndarray, np.ndarray, np.ndarray]  # fixed_mm (N, d), moving_mm (N, d), inlier (N,)
Letters = tuple[str, str, str, str]  # patient directions at the left, right, top and bottom edges

# (name, world direction of screen-right, world direction of screen-down), LPS.
PLANES_3D = (
    ("axial", (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    ("coronal", (1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    ("sagittal", (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
)
INLIER, OUTLIER = "#39ff14", "#ff3030"
SUMMARY_PT = 9
_WINDOW_PX = 160  # side of a displayed window around a point


def plane_grids(
    corners_mm: np.ndarray, center_mm: np.ndarray, spacing: float
) -> list[tuple[str, Grid, Letters]]:
    """The displayed planes covering ``corners_mm`` ``(K, d)`` (3D: through ``center_mm``), named, with
    their edge letters."""
    if corners_mm.shape[1] == 2:
        return [("image", axis_aligned_grid(corners_mm, spacing), _letters((1.0, 0.0), (0.0, 1.0)))]
    return [
        (name, _slice_grid(corners_mm, center_mm, np.array(r), np.array(d), spacing), _letters(r, d))
        for name, r, d in PLANES_3D
    ]


def _slice_grid(
    corners_mm: np.ndarray, center_mm: np.ndarray, right: np.ndarray, down: np.ndarray, spacing_mm: float
) -> Grid:
    """A 3-slice grid whose middle slice is the plane through ``center_mm`` spanned by right/down,
    covering the projection of ``corners_mm`` ``(K, 3)``; index axes (x, y, z) = (right, down, normal)."""
    normal = np.cross(right, down)
    pr, pd = corners_mm @ right, corners_mm @ down
    size = np.ceil(np.array([np.ptp(pr), np.ptp(pd)]) / spacing_mm).astype(int) + 1
    # Three slices, not one: affine_grid puts a one-voxel axis at 0, not -1, i.e. half a voxel off.
    origin = (center_mm @ normal) * normal + pr.min() * right + pd.min() * down - spacing_mm * normal
    return Grid(
        shape=(3, int(size[1]), int(size[0])),
        spacing_mm=(spacing_mm,) * 3,
        origin_mm=tuple(float(v) for v in origin),
        direction=np.column_stack([right, down, normal]),
    )


def _letters(right: tuple[float, ...], down: tuple[float, ...]) -> Letters:
    """Patient directions (LPS letters) at the left, right, top and bottom screen edges."""

    def letter(v: np.ndarray) -> str:
        axis = int(np.argmax(np.abs(v)))
        return ("LPS" if v[axis] > 0 else "RAI")[axis]

    r, d = np.asarray(right), np.asarray(down)
    return letter(-r), letter(r), letter(-d), letter(d)


def _sample(image: Image, grid: Grid, transform: Transform | None) -> np.ndarray:
    """``(H, W)`` slice of ``image`` on ``grid`` (3D: its middle slice), 0 outside the image."""
    out = resample(image, grid, transform)
    values = np.where(out.mask, out.array, 0.0)
    return values[1] if grid.ndim == 3 else values


def qa_suffixes() -> tuple[str, ...]:
    """File name endings :func:`save_qa` writes (the formats of matplotlib's Agg canvas)."""
    return tuple(f".{fmt}" for fmt in FigureCanvasAgg.get_supported_filetypes())


def _save_figure(path: str | Path, fig: Figure, dpi: int) -> None:
    """Write ``fig`` to ``path`` atomically, ``figure size x dpi`` pixels (format from the suffix, PNG
    by default; no tight cropping, so the size is predictable)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt, facecolor="white"))


def decorate(ax: Axes, shape: tuple[int, int], letters: Letters, x0: float) -> None:
    """Orientation letters at the edges of the slice of ``shape`` whose left edge is at column ``x0``;
    no ticks."""
    h, w = shape
    left, right, top, bottom = letters
    style = {"color": "yellow", "fontsize": 9, "fontweight": "bold"}
    ax.text(x0 + 2, h / 2, left, ha="left", va="center", **style)
    ax.text(x0 + w - 3, h / 2, right, ha="right", va="center", **style)
    ax.text(x0 + w / 2, 2, top, ha="center", va="top", **style)
    ax.text(x0 + w / 2, h - 3, bottom, ha="center", va="bottom", **style)
    ax.set_xticks([])
    ax.set_yticks([])


def scalebar(ax: Axes, shape: tuple[int, int], spacing: float) -> None:
    """A bar of a round length in mm at the bottom left of a slice of ``shape``, ``spacing`` mm pixels."""
    h, w = shape
    width_mm = w * spacing
    length_mm = max([v for v in (1, 2, 5, 10, 20, 50, 100, 200) if v <= width_mm / 4] or [1])
    x, y = 0.04 * w, 0.95 * h
    ax.plot([x, x + length_mm / spacing], [y, y], color="white", linewidth=2)
    ax.text(x, y - 0.02 * h, f"{length_mm} mm", color="white", fontsize=7, va="bottom")


def points_figure(
    source: Image,
    source_mm: np.ndarray,
    target: Image,
    found: Located,
    labels: list[str],
    title: str = "",
    sides: tuple[str, str] = ("template", "query"),
    max_points: int = 6,
    half_mm: float = 40.0,
) -> Figure:
    """Points of ``source`` and where they were ``found`` in ``target``, at a glance: one row per
    point (up to ``max_points``, :func:`shown_points`), the source around its point beside the target
    around the found one (3D: axial, coronal, sagittal), windows ``half_mm`` either side of the point,
    which is circled green when reliable and boxed red when not. ``sides`` names the two images."""
    shown = shown_points(found.reliable, found.score, max_points)
    images = (robust_normalize(source), robust_normalize(target))
    ncols = 2 * (3 if source.ndim == 3 else 1)
    panel_in = 1.7 if source.ndim == 3 else 2.6
    fig = Figure(figsize=(ncols * panel_in + 0.8, len(shown) * panel_in + 1.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(shown), ncols, squeeze=False)
    for row, i in zip(axes, shown, strict=True):
        ok = bool(found.reliable[i])
        points = (source_mm[i], found.points_mm[i])
        panels = [
            (side, image, point, plane)
            for side, image, point in zip(sides, images, points, strict=True)
            for plane in plane_grids(_square(point, half_mm), point, 2 * half_mm / _WINDOW_PX)
        ]
        for ax, (side, image, point, (name, grid, letters)) in zip(row, panels, strict=True):
            _show_point(ax, image, point, grid, letters, ok)
            if i == shown[0]:
                ax.set_title(side if source.ndim == 2 else f"{side} {name}", fontsize=9)
        verdict = "reliable" if ok else "UNRELIABLE"
        row[0].set_ylabel(
            f"{labels[i]}\nscore {found.score[i]:.3f}\n{verdict}\nround trip {found.round_trip_mm[i]:.1f} mm",
            fontsize=8,
            color="black" if ok else OUTLIER,
        )
    fig.suptitle(title, fontsize=11, fontweight="bold")
    k = int(found.reliable.sum())
    note = (
        f"{len(found.score)} points, {k} reliable; {len(shown)} shown (unreliable first). Left: the "
        f"{sides[0]} around each point; right: the {sides[1]} around the point found for it; windows "
        f"{2 * half_mm:g} mm across. Green circle: reliable; red square: unreliable (the search back "
        "did not return)."
    )
    chars = int(fig.get_figwidth() * 72 / (0.6 * SUMMARY_PT))
    fig.supxlabel(textwrap.fill(note, chars), fontsize=SUMMARY_PT, ha="left", x=0.01)
    return fig


def shown_points(reliable: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Indices of up to ``k`` points to show, in their order: unreliable ones (lowest score first; at
    least half of ``k`` where there are that many) and reliable ones spread evenly over the list."""
    bad = np.flatnonzero(~reliable)
    bad = bad[np.argsort(score[bad], kind="stable")]
    good = np.flatnonzero(reliable)
    n_bad = min(len(bad), max(k // 2, k - len(good)))
    n_good = min(len(good), k - n_bad)
    spread = good[np.linspace(0, len(good) - 1, n_good).round().astype(int)] if n_good else good[:0]
    return np.sort(np.concatenate([bad[:n_bad], spread]))


def _square(center_mm: np.ndarray, half_mm: float) -> np.ndarray:
    """Corners ``(2**d, d)`` of the cube (square) ``half_mm`` either side of ``center_mm``."""
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=len(center_mm))))
    return center_mm + half_mm * signs


def _show_point(ax: Axes, image: Image, point_mm: np.ndarray, grid: Grid, letters: Letters, ok: bool) -> None:
    """The slice of ``image`` on ``grid`` with ``point_mm`` marked: a green circle if ``ok``, else a
    red square."""
    values = _sample(image, grid, None)
    ax.imshow(values, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    u, v = grid.world_to_index(point_mm[None])[0][:2]
    style = {"marker": "o", "edgecolors": INLIER} if ok else {"marker": "s", "edgecolors": OUTLIER}
    ax.scatter([u], [v], s=220, facecolors="none", linewidths=1.5, **style)
    decorate(ax, values.shape, letters, 0)
    scalebar(ax, values.shape, grid.spacing_mm[0])


def save_points_qa(
    path: str | Path,
    source: Image,
    source_mm: np.ndarray,
    target: Image,
    found: Located,
    labels: list[str],
    title: str = "",
    sides: tuple[str, str] = ("template", "query"),
    dpi: int = 100,
) -> None:
    """Write :func:`points_figure` to ``path`` atomically (:func:`_save_figure`)."""
    _save_figure(path, points_figure(source, source_mm, target, found, labels, title, sides), dpi)
