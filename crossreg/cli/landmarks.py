"""``crossreg landmarks`` and ``crossreg track``: points of one image found in another (one search)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from crossreg.cli.app import app
from crossreg.cli.common import check_device, console, friendly_errors
from crossreg.errors import CrossregError

LocateFeatures = Literal["uae", "mind"]
OutTable = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        help="Table to write (.csv or .mrk.json): the rows with found x,y[,z], score, reliable.",
    ),
]
Qa = Annotated[
    Path | None,
    typer.Option(help="Also write a QA figure (PNG): each shown point in both images, side by side."),
]
FeaturesOption = Annotated[
    LocateFeatures | None,
    typer.Option(
        "--features",
        help="Descriptors: uae (learned anatomical embeddings, 3D; the default for 3D images) or mind "
        "(hand-crafted, any dimension; the default for 2D images).",
    ),
]
Device = Annotated[str, typer.Option(help="Torch device: cpu or cuda.")]
Weights = Annotated[
    Path | None, typer.Option(help="Embedding model file from `crossreg train embedding` (default: shipped).")
]
Force = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing outputs.")]


@app.command()
@friendly_errors
def landmarks(
    template: Annotated[Path, typer.Argument(help="Image the landmarks were placed on (2D or 3D).")],
    template_points: Annotated[
        Path, typer.Argument(help="Landmarks on TEMPLATE: CSV with x,y[,z] columns (LPS mm), or .mrk.json.")
    ],
    query: Annotated[Path, typer.Argument(help="Image to find them in, same dimensionality as TEMPLATE.")],
    out: OutTable,
    qa: Qa = None,
    features: FeaturesOption = None,
    device: Device = "cpu",
    weights: Weights = None,
    force: Force = False,
) -> None:
    """Find landmarks placed on TEMPLATE in QUERY.

    One shot, no registration: each point is searched for by its descriptor over the whole QUERY. OUT
    gets the rows of TEMPLATE_POINTS with the found coordinates, score and reliable (see
    docs/landmarks.md)."""
    find(template, template_points, query, out, qa, features, device, weights, force, ("template", "query"))


@app.command()
@friendly_errors
def track(
    baseline: Annotated[Path, typer.Argument(help="Baseline scan (3D; 2D with --features mind).")],
    lesions: Annotated[
        Path,
        typer.Argument(help="Lesion centres on BASELINE: CSV x,y,z (LPS mm), optional radius, label."),
    ],
    followup: Annotated[Path, typer.Argument(help="Follow-up scan to find the lesions in.")],
    out: OutTable,
    qa: Qa = None,
    features: FeaturesOption = None,
    device: Device = "cpu",
    weights: Weights = None,
    force: Force = False,
) -> None:
    """Find the lesions of BASELINE in FOLLOWUP.

    The landmark search for lesion centres: OUT gets the rows of LESIONS (radius, label and any other
    columns carried through) with the follow-up centres, score and reliable (see docs/landmarks.md)."""
    find(baseline, lesions, followup, out, qa, features, device, weights, force, ("baseline", "follow-up"))


def find(
    source_path: Path,
    points_path: Path,
    target_path: Path,
    out: Path,
    qa: Path | None,
    features: str | None,
    device: str,
    weights: Path | None,
    force: bool,
    sides: tuple[str, str],
) -> None:
    """Find the points of ``points_path`` (on the source image) in the target image; write the table
    ``out`` and the figure ``qa`` (``sides`` names the two images); print a one-line summary. Every
    input is checked before the search."""
    from crossreg.config import RegisterConfig
    from crossreg.features import make_features
    from crossreg.imageio import load
    from crossreg.locate import LocateConfig, find_points
    from crossreg.markups import POINTS_SUFFIXES, read_points_table, write_points_table
    from crossreg.outputs import check_outputs, check_suffix
    from crossreg.viz import qa_suffixes, save_points_qa

    check_outputs([out, qa], force)
    check_suffix(out, POINTS_SUFFIXES, "points table")
    check_suffix(qa, qa_suffixes(), "figure")
    check_device(device)
    table = read_points_table(points_path)
    source, target = load(source_path), load(target_path)
    points = table.points_for(source.ndim)
    kind = features or ("uae" if source.ndim == 3 else "mind")
    if weights is not None and kind != "uae":
        raise CrossregError(f"--weights is an embedding model: it goes with --features uae, not {kind}")
    config = RegisterConfig(features=kind, weights=None if weights is None else str(weights), device=device)
    described_by = make_features(config, source.ndim)
    start = time.perf_counter()
    with console.status(f"finding {len(points)} points ({kind})"):
        found = find_points(source, points, target, described_by)
    write_points_table(out, table, found)
    if qa is not None:
        title = f"{points_path.name}: {source_path.name} -> {target_path.name} ({kind})"
        try:
            save_points_qa(qa, source, points, target, found, table.labels, title, sides)
        except BaseException:  # all outputs or none
            out.unlink(missing_ok=True)
            raise
    console.print(
        f"{len(points)} points, {int(found.reliable.sum())} reliable (round trip within "
        f"{LocateConfig().round_trip_mm:g} mm); {kind} features, {time.perf_counter() - start:.1f} s",
        highlight=False,
    )
    console.print(f"wrote {out}" + (f", {qa}" if qa else ""), highlight=False)
