"""``crossreg bench``: crossreg and the baselines side by side on synthetic and real cases."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from crossreg.cli.app import app
from crossreg.cli.common import check_device, console, friendly_errors, parse_list
from crossreg.cli.synth import KINDS
from crossreg.errors import CrossregError


@app.command()
@friendly_errors
def bench(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for results.json, results.md, tre.png.")
    ] = Path("bench"),
    kinds: Annotated[
        str, typer.Option(help="Synthetic case kinds from the shipped MNI152 T1 (comma-separated), or none.")
    ] = "us,t2,ct,random",
    n_per_kind: Annotated[int, typer.Option(help="Synthetic cases per kind.")] = 10,
    ndim: Annotated[int, typer.Option(help="Synthetic cases in 3D or 2D (slices).")] = 3,
    data: Annotated[
        list[Path] | None,
        typer.Option(help="A folder of real case folders (fixed.*, moving.*, landmarks.csv); repeatable."),
    ] = None,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods (default: all of them; see --list-methods).")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="CrossKEY model for the crosskey methods (default: the shipped one).")
    ] = None,
    list_methods: Annotated[bool, typer.Option(help="Print the available methods and exit.")] = False,
    device: Annotated[str, typer.Option(help="Torch device for crossreg: cpu or cuda.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the synthetic cases and of every method.")] = 0,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing results.")] = False,
) -> None:
    """Run every method on every case (one run), score TRE, success (< 3 mm), matching precision and
    time per pair per case kind; write a markdown table, JSON and a plot. Baselines whose package is
    missing (pip install 'crossreg[bench]') are listed as skipped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from crossreg.evaluate.baselines import default_methods
    from crossreg.evaluate.bench import run_bench
    from crossreg.evaluate.cases import folder_cases, synthetic_cases
    from crossreg.evaluate.report import to_markdown
    from crossreg.outputs import check_outputs

    available = default_methods(device, None if weights is None else str(weights))
    if list_methods:
        for m in available:
            console.print(f"{m.name}: {m.missing() or 'available'}", highlight=False)
        return
    check_outputs([out / name for name in ("results.json", "results.md", "tre.png")], force)
    check_device(device)
    if ndim not in (2, 3):
        raise CrossregError(f"--ndim {ndim}: expected 2 or 3")
    names = parse_list(methods, "--methods", tuple(m.name for m in available)) if methods else None
    chosen = [m for m in available if names is None or m.name in names]
    cases = [c for folder in data or [] for c in folder_cases(folder)]
    if kinds.strip().lower() != "none" and n_per_kind > 0:
        cases += synthetic_cases(parse_list(kinds, "--kinds", KINDS), n_per_kind, seed, ndim)
    if not cases:
        raise CrossregError("no cases: give --data folders or synthetic --kinds with --n-per-kind > 0")
    command = "crossreg " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "crossreg bench"
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("benchmark", total=len(cases) * len(chosen))

        def advance(done: int, total: int, line: str) -> None:
            progress.update(task, completed=done, description=line[:70])

        report = run_bench(cases, chosen, out, device, seed, command, advance)
    console.print(to_markdown(report), highlight=False, markup=False)
