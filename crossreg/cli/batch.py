"""``crossreg batch``: register every pair of a CSV on Dask, resumably."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from crossreg.cli.app import app
from crossreg.cli.common import check_device, console, friendly_errors


@app.command()
@friendly_errors
def batch(
    pairs: Annotated[
        Path,
        typer.Argument(
            help="CSV with columns fixed, moving and optionally id, landmarks, model, features, weights, "
            "refine, deformable, seed (one row per pair; relative paths are relative to the CSV's folder)."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for one sub-folder per pair and summary.csv/json.")
    ],
    scheduler: Annotated[
        str | None,
        typer.Option(help="Dask scheduler address (e.g. tcp://host:8786); default: a local cluster."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Local cluster: worker processes, one pair each (default: cores).")
    ] = None,
    memory_limit: Annotated[
        str, typer.Option(help="Local cluster: memory per worker, e.g. 4GB (auto: total memory / workers).")
    ] = "auto",
    device: Annotated[str, typer.Option(help="Torch device of every worker: cpu or cuda.")] = "cpu",
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Redo every pair, including those already done.")
    ] = False,
) -> None:
    """Register every pair of PAIRS; pairs already done are skipped, failed ones recorded in the summary.

    Exit code 0 when every pair is registered, 3 when some failed.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from crossreg.batch import BatchConfig, PairRecord, read_pairs, run_batch

    check_device(device)
    # Dask logs every scheduler, worker and client start and stop at INFO: no crossreg diagnostic.
    # Its config reads this when distributed is imported, here and in worker processes alike.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    pair_list = read_pairs(pairs)
    config = BatchConfig(out, scheduler, workers, memory_limit, device, force)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("registering", total=len(pair_list))

        def show(record: PairRecord) -> None:
            progress.update(task, advance=1, description=f"{record.id}: {record.status}")

        records = run_batch(pair_list, config, show)
    counts = {s: sum(r.status == s for r in records) for s in ("ok", "skipped", "failed")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False)
    summary = out / "summary.csv"
    if counts["failed"]:
        for r in records:
            if r.status == "failed":
                console.print(f"failed {r.id}: {r.error}", highlight=False, soft_wrap=True)
        console.print(f"{counts['failed']} of {len(records)} pairs failed; see {summary}", highlight=False)
        raise typer.Exit(3)
    console.print(f"wrote {summary} and {out / 'summary.json'}", highlight=False)
