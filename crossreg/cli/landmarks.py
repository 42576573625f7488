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
TrackMethod = Literal["local", "uae"]
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
    baseline: Annotated[
        Path, typer.Argument(help="Baseline scan (3D; 2D with --method uae --features mind).")
    ],
    lesions: Annotated[
        Path,
        typer.Argument(help="Lesion centres on BASELINE: CSV x,y,z (LPS mm), optional radius, label."),
    ],
    followup: Annotated[Path, typer.Argument(help="Follow-up scan to find the lesions in.")],
    out: OutTable,
    qa: Qa = None,
    method: Annotated[
        TrackMethod,
        typer.Option(
            help="local: rigid registration of the pair, then a MIND-SSC patch search around each lesion "
            "(3D; the radius column sizes the patch); uae: the landmark search (--features)."
        ),
    ] = "local",
    features: FeaturesOption = None,
    device: Device = "cpu",
    weights: Weights = None,
    force: Force = False,
) -> None:
    """Find the lesions of BASELINE in FOLLOWUP.

    OUT gets the rows of LESIONS (radius, label and any other columns carried through) with the
    follow-up centres, score and reliable (see docs/landmarks.md)."""
    if method == "local" and (features is not None or weights is not None):
        raise CrossregError("--features and --weights go with --method uae; --method local uses MIND-SSC")
    kind = "local" if method == "local" else features
    find(baseline, lesions, followup, out, qa, kind, device, weights, force, ("baseline", "follow-up"))


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
    input is checked before the search. ``features``: as ``--features``, or ``local`` for
    :func:`crossreg.track_local.track_lesions` after a rigid registration."""
    from crossreg.imageio import load
    from crossreg.locate import LocateConfig
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
    search = searcher(kind, source.ndim, device, weights)
    start = time.perf_counter()
    with console.status(f"finding {len(points)} points ({kind})"):
        found = search(source, points, target, table)
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
        f"{LocateConfig().round_trip_mm:g} mm); {kind} {'patch search' if kind == 'local' else 'features'}, "
        f"{time.perf_counter() - start:.1f} s",
        highlight=False,
    )
    console.print(f"wrote {out}" + (f", {qa}" if qa else ""), highlight=False)


def searcher(kind: str, ndim: int, device: str, weights: Path | None):
    """``(source, points (N, d), target, table) -> Located``: the landmark search with features ``kind``,
    or (``local``) the rigid registration and local patch search, sized by the table's radius column."""
    from crossreg.config import RegisterConfig
    from crossreg.features import make_features
    from crossreg.locate import find_points

    if weights is not None and kind != "uae":
        raise CrossregError(f"--weights is an embedding model: it goes with --features uae, not {kind}")
    if kind != "local":
        config = RegisterConfig(
            features=kind, weights=None if weights is None else str(weights), device=device
        )
        described_by = make_features(config, ndim)
        return lambda source, points, target, table: find_points(source, points, target, described_by)
    if ndim != 3:
        raise CrossregError("--method local is 3D; for 2D images use --method uae --features mind")

    def local(source, points, target, table):
        from crossreg.register import register
        from crossreg.track_local import track_lesions

        radii_mm = table.numbers("radius")  # a bad cell stops the command before the registration
        rigid = register(source, target, RegisterConfig(device=device)).transform
        return track_lesions(source, points, target, rigid, radii_mm)

    return local
