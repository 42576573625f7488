"""The QA figure of ``crossreg match``: both images side by side with a line per match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from crossreg.image import Image
from crossreg.matcher2d.world import WorldMatches
from crossreg.viz import _save_figure

#: At most this many matches are drawn (the most confident), so the figure stays readable.
MAX_LINES = 300


def matches_figure(image0: Image, image1: Image, found: WorldMatches, title: str = "") -> Figure:
    """``image0`` left, ``image1`` right (their arrays, rows down), a line coloured by confidence from
    each match's point in one to its point in the other."""
    fig = Figure(figsize=(10, 5))
    ax = fig.add_subplot()
    a, b = (np.asarray(im.array, float) for im in (image0, image1))
    height = max(a.shape[0], b.shape[0])
    canvas = np.full((height, a.shape[1] + b.shape[1]), np.nan)
    canvas[: a.shape[0], : a.shape[1]] = (a - np.nanmin(a)) / max(np.ptp(a), 1e-6)
    canvas[: b.shape[0], a.shape[1] :] = (b - np.nanmin(b)) / max(np.ptp(b), 1e-6)
    ax.imshow(canvas, cmap="gray", interpolation="nearest")
    shown = np.argsort(-found.confidence)[:MAX_LINES]
    p0 = image0.grid.world_to_index(found.points0_mm[shown])
    p1 = image1.grid.world_to_index(found.points1_mm[shown]) + np.array([a.shape[1], 0])
    for (x0, y0), (x1, y1), c in zip(p0, p1, found.confidence[shown], strict=True):
        ax.plot([x0, x1], [y0, y1], lw=0.6, color=(1 - c, c, 0.2))
    ax.set_title(title or f"{len(found)} matches ({len(shown)} most confident shown)")
    ax.set_axis_off()
    return fig


def save_matches_qa(path: str | Path, image0: Image, image1: Image, found: WorldMatches) -> None:
    """Write :func:`matches_figure` to ``path`` atomically."""
    _save_figure(path, matches_figure(image0, image1, found), dpi=100)
