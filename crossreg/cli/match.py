"""``crossreg match``: correspondences between two 2D images from the pretrained matcher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossreg.cli.app import app
from crossreg.cli.common import check_device, console, friendly_errors


@app.command()
@friendly_errors
def match(
    image_a: Annotated[Path, typer.Argument(help="First 2D image (its points are the fixed_* columns).")],
    image_b: Annotated[Path, typer.Argument(help="Second 2D image (the moving_* columns).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Matches to write (CSV, world mm LPS, as register --matches).")
    ],
    qa: Annotated[Path | None, typer.Option(help="Also write a figure (PNG) with a line per match.")] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="Matcher model from `crossreg train matcher` (default: the shipped one)."),
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="Coarse confidence a match needs (0..1).", min=0, max=0.99)
    ] = 0.2,
    device: Annotated[str, typer.Option(help="Torch device: cpu or cuda.")] = "cpu",
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing outputs.")] = False,
) -> None:
    """Find corresponding points of two 2D images of any modalities (no transform is estimated)."""
    import numpy as np

    from crossreg.imageio import load
    from crossreg.markups import write_matches_csv
    from crossreg.matcher2d.match import Matcher2dConfig, load_matcher
    from crossreg.matcher2d.qa import save_matches_qa
    from crossreg.matcher2d.world import match_world
    from crossreg.outputs import check_outputs, check_suffix
    from crossreg.viz import qa_suffixes

    check_outputs([out, qa], force)
    check_suffix(out, (".csv",), "matches table")
    check_suffix(qa, qa_suffixes(), "figure")
    check_device(device)
    image0, image1 = load(image_a), load(image_b)
    net, _ = load_matcher(weights, device)
    with console.status("matching"):
        found = match_world(net, image0, image1, Matcher2dConfig(threshold=threshold))
    # Every row passed the matcher's mutual and confidence tests; no transform judged them.
    write_matches_csv(out, found.points0_mm, found.points1_mm, np.ones(len(found), bool), found.confidence)
    if qa is not None:
        save_matches_qa(qa, image0, image1, found)
    console.print(f"{len(found)} matches; wrote {out}" + (f", {qa}" if qa else ""), highlight=False)
