"""QA figures for a registration: checkerboards of fixed and moving before and after, and match lines.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from crossreg.errors import DimensionMismatchError
from crossreg.image import Grid, Image, axis_aligned_grid, fov_mask, robust_normalize
from crossreg.outputs import atomic_write
from crossreg.resample import resample
from crossreg.transform import AffineTransform, Transform

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
MAX_DISPLAY_PX = 400  # longest side of a displayed slice
_TINT = np.array([1.0, 0.8, 0.5])  # moving tiles are amber, fixed tiles grey
_INLIER, _OUTLIER = "#39ff14", "#ff3030"
_SUMMARY_PT = 9
_WINDOW_PX = 160  # side of a displayed window around a point


@dataclass(frozen=True, eq=False)
class PlaneView:
    """One displayed plane: slices ready for ``imshow`` (row 0 at the top), intensities in [0, 1].

    fixed, before, after: ``(H, W)``; before is the moving image resampled with the identity, after
    with the registration transform; both are 0 outside the moving image. grid: the slice grid (3D:
    three slices thick, the displayed one in the middle); letters: patient directions at the left,
    right, top and bottom edges.
    """

    name: str
    grid: Grid
    letters: Letters
    fixed: np.ndarray
    before: np.ndarray
    after: np.ndarray

    def project(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel positions ``(N, 2)`` (column, row) of world points ``(N, d)`` and their distance
        ``(N,)`` in mm from the displayed plane (signed; 0 in 2D)."""
        idx = self.grid.world_to_index(np.asarray(points_mm, float).reshape(-1, self.grid.ndim))
        if self.grid.ndim == 2:
            return idx, np.zeros(len(idx))
        return idx[:, :2], (idx[:, 2] - 1.0) * self.grid.spacing_mm[2]


def plane_views(
    fixed: Image, moving: Image, transform: Transform, center_mm: np.ndarray | None = None
) -> list[PlaneView]:
    """The displayed planes (3D: axial, coronal, sagittal through ``center_mm``; 2D: the image).

    ``transform`` maps fixed world points to moving world points; ``center_mm`` ``(3,)`` defaults to
    the centroid of the fixed image's field of view.
    """
    if fixed.ndim != moving.ndim or transform.ndim != fixed.ndim:
        raise DimensionMismatchError(
            f"fixed is {fixed.ndim}D, moving {moving.ndim}D, transform {transform.ndim}D; they must agree"
        )
    f, m = robust_normalize(fixed), robust_normalize(moving)
    center = fov_center(fixed) if center_mm is None else np.asarray(center_mm, float)
    return [
        PlaneView(
            name, grid, letters, _sample(f, grid, None), _sample(m, grid, None), _sample(m, grid, transform)
        )
        for name, grid, letters in _display_grids(fixed, center)
    ]


def checkerboard(a: np.ndarray, b: np.ndarray, tile_px: int) -> np.ndarray:
    """``(H, W)`` checkerboard of two ``(H, W)`` slices: ``b`` in the tiles where ``tiles(...)`` holds."""
    return np.where(tiles(a.shape, tile_px), b, a)


def tiles(shape: tuple[int, int], tile_px: int) -> np.ndarray:
    """``(H, W)`` bool checkerboard pattern of square tiles ``tile_px`` wide, False at the top left."""
    rows, cols = np.indices(shape)
    return (rows // tile_px + cols // tile_px) % 2 == 1


def fov_center(image: Image) -> np.ndarray:
    """World position ``(d,)`` mm of the centroid of the image's field of view (its signal)."""
    mask = fov_mask(image)
    if not mask.any():
        return image.grid.center_mm()
    axes = range(mask.ndim)
    index_zyx = [
        np.average(np.arange(n), weights=mask.sum(axis=tuple(j for j in axes if j != i)))
        for i, n in enumerate(mask.shape)
    ]
    return image.grid.index_to_world(np.array(index_zyx[::-1])[None])[0]


def _display_grids(fixed: Image, center_mm: np.ndarray) -> list[tuple[str, Grid, Letters]]:
    corners = fixed.grid.corners_mm()
    extent = float(np.ptp(corners, axis=0).max())
    return _plane_grids(corners, center_mm, max(min(fixed.spacing_mm), extent / MAX_DISPLAY_PX))


def _plane_grids(
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


def qa_figure(
    fixed: Image,
    moving: Image,
    transform: Transform,
    matches: Matches | None = None,
    title: str = "",
    center_mm: np.ndarray | None = None,
    slab_mm: float = 5.0,
) -> Figure:
    """A QA figure: rows of checkerboards before and after registration, then matches if given.

    ``transform`` maps fixed to moving world points. 3D images show three orthogonal planes through
    ``center_mm`` (default: the inlier centroid, else the fixed field-of-view centroid); match lines
    are drawn for matches whose fixed point lies within ``slab_mm`` of a plane.
    """
    if matches is not None:
        matches = _check_matches(matches, fixed.ndim)
    if center_mm is None and matches is not None and matches[2].any():
        center_mm = matches[0][matches[2]].mean(axis=0)
    center = fov_center(fixed) if center_mm is None else np.asarray(center_mm, float)
    views = plane_views(fixed, moving, transform, center)
    nrows = 2 if matches is None else 3
    fig = Figure(figsize=_figsize(views, nrows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(nrows, len(views), height_ratios=_row_ratios(views, nrows))
    tile_px = max(4, round(max(max(v.fixed.shape) for v in views) / 8))
    row_names = ("before: moving as is", "after: moving through T", "matches: fixed | moving via T")
    for col, view in enumerate(views):
        axes = [fig.add_subplot(grid[row, col]) for row in range(nrows)]
        _show_board(axes[0], view, view.before, tile_px)
        _show_board(axes[1], view, view.after, tile_px)
        if matches is not None:
            _show_matches(axes[2], view, matches, transform, slab_mm)
        axes[0].set_title(view.name if fixed.ndim == 3 else "", fontsize=11)
        for ax, label in zip(axes, row_names, strict=False):
            ax.set_ylabel(label if col == 0 else "", fontsize=10)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    summary = _summary(transform, matches, center, slab_mm, fig.get_figwidth())
    fig.supxlabel(summary, fontsize=_SUMMARY_PT, ha="left", x=0.01)
    return fig


def qa_suffixes() -> tuple[str, ...]:
    """File name endings :func:`save_qa` writes (the formats of matplotlib's Agg canvas)."""
    return tuple(f".{fmt}" for fmt in FigureCanvasAgg.get_supported_filetypes())


def save_qa(
    path: str | Path,
    fixed: Image,
    moving: Image,
    transform: Transform,
    matches: Matches | None = None,
    title: str = "",
    center_mm: np.ndarray | None = None,
    slab_mm: float = 5.0,
    dpi: int = 100,
) -> None:
    """Write :func:`qa_figure` to ``path`` atomically (:func:`_save_figure`)."""
    _save_figure(path, qa_figure(fixed, moving, transform, matches, title, center_mm, slab_mm), dpi)


def _save_figure(path: str | Path, fig: Figure, dpi: int) -> None:
    """Write ``fig`` to ``path`` atomically, ``figure size x dpi`` pixels (format from the suffix, PNG
    by default; no tight cropping, so the size is predictable)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt, facecolor="white"))


def _check_matches(matches: Matches, ndim: int) -> Matches:
    fixed_mm, moving_mm, inlier = (np.asarray(a) for a in matches)
    n = len(fixed_mm)
    if fixed_mm.shape != (n, ndim) or moving_mm.shape != (n, ndim) or inlier.shape != (n,):
        raise ValueError(
            f"matches must be fixed_mm ({n}, {ndim}), moving_mm ({n}, {ndim}), inlier ({n},); got "
            f"{fixed_mm.shape}, {moving_mm.shape}, {inlier.shape}"
        )
    return fixed_mm.astype(float), moving_mm.astype(float), inlier.astype(bool)


def _row_ratios(views: list[PlaneView], nrows: int) -> list[float]:
    """Height/width of the tallest panel in each row (match panels hold two slices side by side)."""
    board = max(v.fixed.shape[0] / v.fixed.shape[1] for v in views)
    pair = max(v.fixed.shape[0] / (2 * v.fixed.shape[1] + _gap(v)) for v in views)
    return [board, board, pair][:nrows]


def _figsize(views: list[PlaneView], nrows: int) -> tuple[float, float]:
    col_in = 4.0 if len(views) > 1 else 5.0
    return col_in * len(views) + 0.4, col_in * sum(_row_ratios(views, nrows)) + 1.4


def _gap(view: PlaneView) -> int:
    return max(4, view.fixed.shape[1] // 30)


def _show_board(ax: Axes, view: PlaneView, moving: np.ndarray, tile_px: int) -> None:
    """Checkerboard of fixed (grey tiles) and moving (amber tiles)."""
    mask = tiles(view.fixed.shape, tile_px)[..., None]
    rgb = np.where(mask, moving[..., None] * _TINT, view.fixed[..., None])
    ax.imshow(np.clip(rgb, 0.0, 1.0), interpolation="nearest")
    _decorate(ax, view.fixed.shape, view.letters, 0)
    _scalebar(ax, view.fixed.shape, view.grid.spacing_mm[0])


def _show_matches(ax: Axes, view: PlaneView, matches: Matches, transform: Transform, slab_mm: float) -> None:
    """Fixed and moving-through-T slices side by side, joined by lines for matches near the plane."""
    h, w = view.fixed.shape
    gap = _gap(view)
    pair = np.hstack([view.fixed, np.full((h, gap), np.nan), view.after])
    cmap = mpl.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(pair, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    fixed_mm, moving_mm, inlier = matches
    uv_f, off_f = view.project(fixed_mm)
    uv_m, _ = view.project(transform.inverse().apply(moving_mm))
    uv_m[:, 0] += w + gap
    near = np.abs(off_f) <= slab_mm
    segments = np.stack([uv_f, uv_m], axis=1)
    ax.add_collection(LineCollection(segments[near & ~inlier], colors=_OUTLIER, linewidths=0.6, alpha=0.4))
    ax.add_collection(LineCollection(segments[near & inlier], colors=_INLIER, linewidths=0.8, alpha=0.8))
    ends = segments[near & inlier].reshape(-1, 2)
    ax.scatter(ends[:, 0], ends[:, 1], s=8, c=_INLIER, linewidths=0)
    ax.set_xlim(-0.5, 2 * w + gap - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    for x0 in (0, w + gap):
        _decorate(ax, view.fixed.shape, view.letters, x0)
    shown = f"{int((near & inlier).sum())} inliers, {int((near & ~inlier).sum())} outliers"
    ax.set_xlabel(shown + (f" within ±{slab_mm:g} mm" if view.grid.ndim == 3 else ""), fontsize=8)


def _decorate(ax: Axes, shape: tuple[int, int], letters: Letters, x0: float) -> None:
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


def _scalebar(ax: Axes, shape: tuple[int, int], spacing: float) -> None:
    """A bar of a round length in mm at the bottom left of a slice of ``shape``, ``spacing`` mm pixels."""
    h, w = shape
    width_mm = w * spacing
    length_mm = max([v for v in (1, 2, 5, 10, 20, 50, 100, 200) if v <= width_mm / 4] or [1])
    x, y = 0.04 * w, 0.95 * h
    ax.plot([x, x + length_mm / spacing], [y, y], color="white", linewidth=2)
    ax.text(x, y - 0.02 * h, f"{length_mm} mm", color="white", fontsize=7, va="bottom")


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


def _summary(
    transform: Transform,
    matches: Matches | None,
    center_mm: np.ndarray,
    slab_mm: float,
    width_in: float,
) -> str:
    """Facts under the figure, wrapped to its width: transform, matches, display convention."""
    where = ", ".join(f"{v:.1f}" for v in center_mm)
    shift = np.linalg.norm(transform.apply(center_mm[None])[0] - center_mm)
    facts = f"T fixed→moving ({transform.model}): {_motion(transform)}"
    lines = [f"{facts}; moves the display centre ({where}) mm LPS by {shift:.1f} mm"]
    if matches is not None:
        n, k = len(matches[2]), int(matches[2].sum())
        slab = f" (fixed point within ±{slab_mm:g} mm of the plane)" if len(center_mm) == 3 else ""
        lines.append(
            f"matches {n}, inliers {k} ({100 * k / max(n, 1):.0f}%); lines: inliers green, outliers red{slab}"
        )
    view = (
        "radiological view (patient left on screen right)"
        if len(center_mm) == 3
        else "world +x right, +y down"
    )
    lines.append(f"{view}; checkerboard tiles: grey = fixed, amber = moving")
    chars = int(width_in * 72 / (0.6 * _SUMMARY_PT))
    return "\n".join(textwrap.fill(line, chars, subsequent_indent="  ") for line in lines)


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
            for plane in _plane_grids(_square(point, half_mm), point, 2 * half_mm / _WINDOW_PX)
        ]
        for ax, (side, image, point, (name, grid, letters)) in zip(row, panels, strict=True):
            _show_point(ax, image, point, grid, letters, ok)
            if i == shown[0]:
                ax.set_title(side if source.ndim == 2 else f"{side} {name}", fontsize=9)
        verdict = "reliable" if ok else "UNRELIABLE"
        row[0].set_ylabel(
            f"{labels[i]}\nscore {found.score[i]:.3f}\n{verdict}\nround trip {found.round_trip_mm[i]:.1f} mm",
            fontsize=8,
            color="black" if ok else _OUTLIER,
        )
    fig.suptitle(title, fontsize=11, fontweight="bold")
    k = int(found.reliable.sum())
    note = (
        f"{len(found.score)} points, {k} reliable; {len(shown)} shown (unreliable first). Left: the "
        f"{sides[0]} around each point; right: the {sides[1]} around the point found for it; windows "
        f"{2 * half_mm:g} mm across. Green circle: reliable; red square: unreliable (the search back "
        "did not return)."
    )
    chars = int(fig.get_figwidth() * 72 / (0.6 * _SUMMARY_PT))
    fig.supxlabel(textwrap.fill(note, chars), fontsize=_SUMMARY_PT, ha="left", x=0.01)
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
    style = {"marker": "o", "edgecolors": _INLIER} if ok else {"marker": "s", "edgecolors": _OUTLIER}
    ax.scatter([u], [v], s=220, facecolors="none", linewidths=1.5, **style)
    _decorate(ax, values.shape, letters, 0)
    _scalebar(ax, values.shape, grid.spacing_mm[0])


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
