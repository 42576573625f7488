"""``crossreg bench``: crossreg and the baselines side by side on synthetic and real cases."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from crossreg.cli.app import app
from crossreg.cli.common import check_device, console, friendly_errors, parse_list
from crossreg.errors import CrossregError


@app.command()
@friendly_errors
def bench(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for results.json, results.md, tre.png.")
    ] = Path("bench"),
    kinds: Annotated[
        str,
        typer.Option(
            help="Synthetic case kinds from the shipped MNI152 T1 (comma-separated; slab: a thin T2 slab of "
            "15-25% of the head; family-edges, family-emission, ... (2D only): the slice in a modality "
            "family of the 2D matcher; us-mirror, us-elsewhere: known negatives, won by refusing; "
            "us-other: a cone of another head), or none."
        ),
    ] = "us,t2,ct,random",
    n_per_kind: Annotated[int, typer.Option(help="Synthetic cases per kind.")] = 10,
    ndim: Annotated[int, typer.Option(help="Synthetic cases in 3D or 2D (slices).")] = 3,
    data: Annotated[
        list[Path] | None,
        typer.Option(help="A folder of real case folders (fixed.*, moving.*, landmarks.csv); repeatable."),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated methods (default: all but the deformable ones, 3D only: crossreg-rigid, "
            "crossreg-deformable, ants-syn-from-rigid, ...; see --list-methods)."
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="CrossKEY model for the crosskey methods and a crosskey rigid start (default: the shipped "
            "one)."
        ),
    ] = None,
    rigid_features: Annotated[
        str,
        typer.Option(
            help="Features of the deformable methods' shared rigid start, comma-separated: tried in order "
            "until one registers the pair (e.g. mind,crosskey: CrossKEY where MIND-SSC refuses a cone)."
        ),
    ] = "mind",
    list_methods: Annotated[bool, typer.Option(help="Print the available methods and exit.")] = False,
    device: Annotated[str, typer.Option(help="Torch device for crossreg: cpu or cuda.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the synthetic cases and of every method.")] = 0,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing results.")] = False,
) -> None:
    """Run every method on every case (one run), score TRE, success (< 3 mm), the area under the
    cumulative TRE curve at 3/5/10 mm, matching precision and time per pair per case kind; write a
    markdown table, JSON and a plot. Baselines whose package is missing (pip install 'crossreg[bench]')
    are listed as skipped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from crossreg.evaluate.baselines import default_methods
    from crossreg.evaluate.bench import run_bench
    from crossreg.evaluate.cases import BENCH_KINDS, folder_cases, synthetic_cases
    from crossreg.evaluate.from_rigid import deformable_methods, rigid_configs
    from crossreg.evaluate.report import to_markdown
    from crossreg.features import FEATURES
    from crossreg.outputs import check_outputs

    defaults = default_methods(device, None if weights is None else str(weights))
    starts = parse_list(rigid_features, "--rigid-features", tuple(FEATURES))
    rigid = rigid_configs(tuple(starts), None if weights is None else str(weights), device)
    available = defaults + deformable_methods(device, rigid)
    if list_methods:
        for m in available:
            console.print(f"{m.name}: {m.missing() or 'available'}", highlight=False)
        return
    check_outputs([out / name for name in ("results.json", "results.md", "tre.png")], force)
    check_device(device)
    if ndim not in (2, 3):
        raise CrossregError(f"--ndim {ndim}: expected 2 or 3")
    names = parse_list(methods, "--methods", tuple(m.name for m in available)) if methods else None
    chosen = defaults if names is None else [m for m in available if m.name in names]
    cases = [c for folder in data or [] for c in folder_cases(folder)]
    if kinds.strip().lower() != "none" and n_per_kind > 0:
        cases += synthetic_cases(parse_list(kinds, "--kinds", BENCH_KINDS), n_per_kind, seed, ndim)
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


@app.command("bench-anatomy")
@friendly_errors
def bench_anatomy(
    task: Annotated[
        str,
        typer.Option(
            help="landmarks: template landmarks in synthetic subjects; tracking: lesions from baseline to "
            "follow-up."
        ),
    ] = "landmarks",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.json and results.md.")] = Path(
        "bench-anatomy"
    ),
    n: Annotated[int, typer.Option(help="Subjects per contrast (landmarks) or pairs (tracking).")] = 20,
    n_syn: Annotated[
        int | None, typer.Option(help="ANTs SyN on the first N cases of each contrast only (default: all).")
    ] = None,
    n_mind: Annotated[
        int | None,
        typer.Option(help="mind-nn on the first N cases of each contrast only (default: all)."),
    ] = None,
    contrasts: Annotated[
        str | None,
        typer.Option(
            help="Subject contrasts (landmarks, default t1,t2,ct) or baseline,follow-up (tracking, "
            "default t1,t2)."
        ),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(help="Comma-separated methods (default: identity,uae,mind-nn,local,affine,syn)."),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Embedding model for uae (default: the shipped one).")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="First subject seed (default: the held-out 5000 landmarks, 6000 tracking)."),
    ] = None,
    device: Annotated[str, typer.Option(help="Torch device for uae and mind-nn: cpu or cuda.")] = "cpu",
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing results.")] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue the report in --out (the same protocol): run only what it lacks.")
    ] = False,
    merge: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated results.json of the same cases, methods run apart (e.g. on a GPU and a CPU "
            "machine): write them as one report in --out and run nothing."
        ),
    ] = None,
) -> None:
    """Find points of one image in another, every method side by side: template landmarks in synthetic
    subjects of the held-out regional deformations, or lesions from baseline to follow-up. Scores
    errors (mm) to the exact truth, the reliable share and time; writes a markdown table and JSON."""
    import importlib.util

    from crossreg.evaluate.anatomy import (
        CONTRASTS,
        REPORT_FILES,
        SEEDS,
        TASKS,
        anatomy_methods,
        merge_reports,
        read_report,
        run_anatomy,
        task_cases,
        task_protocol,
        to_markdown,
        write_report,
    )
    from crossreg.evaluate.report import machine_info
    from crossreg.outputs import check_outputs
    from crossreg.synth.subjects import CONTRASTS as SUBJECT_CONTRASTS

    if merge:
        paths = [Path(p) for p in merge.split(",") if p]
        if missing := [str(p) for p in paths if not p.is_file()]:
            raise CrossregError(f"--merge: no such report: {', '.join(missing)}")
        check_outputs([out / name for name in REPORT_FILES], force)
        merged = merge_reports(paths)
        write_report(merged, out)
        console.print(to_markdown(merged), highlight=False, markup=False)
        return

    if task not in TASKS:
        raise CrossregError(f"--task {task}: choose one of {', '.join(TASKS)}")
    chosen_contrasts = (
        parse_list(contrasts, "--contrasts", SUBJECT_CONTRASTS) if contrasts else CONTRASTS[task]
    )
    if task == "tracking" and len(chosen_contrasts) != 2:
        raise CrossregError("--contrasts: tracking takes two, the baseline's and the follow-up's")
    if n < 1 or min(n_syn or 0, n_mind or 0) < 0:
        raise CrossregError(f"--n {n} / --n-syn {n_syn} / --n-mind {n_mind}: expected at least 1 / 0 / 0")
    check_device(device)
    available = anatomy_methods(device, n_syn, None if weights is None else str(weights), n_mind)
    names = parse_list(methods, "--methods", tuple(m.name for m in available)) if methods else None
    chosen = [m for m in available if names is None or m.name in names]
    if {m.name for m in chosen} & {"affine", "syn"} and importlib.util.find_spec("ants") is None:
        raise CrossregError("affine and syn need ANTsPy: pip install 'crossreg[bench]'")
    first = SEEDS[task] if seed is None else seed
    protocol = task_protocol(task, chosen_contrasts, n, first, chosen)
    done = []
    if resume and (out / "results.json").is_file():
        saved, done = read_report(out / "results.json")
        if saved != protocol:
            raise CrossregError(f"--resume: {out / 'results.json'} was made with another protocol: {saved}")
    argv = sys.argv[1:]
    command = "crossreg " + shlex.join(argv) if argv[:1] == ["bench-anatomy"] else "crossreg bench-anatomy"
    count = len(done)

    def progress(run) -> None:
        nonlocal count
        count += 1
        outcome = (
            f"failed ({run.failed})"
            if run.failed
            else f"mean {sum(run.errors_mm) / len(run.errors_mm):.2f} mm"
        )
        console.print(f"{count:4d} {run.case} {run.method}: {outcome}, {run.seconds:.1f} s", highlight=False)

    report = run_anatomy(
        task,
        task_cases(task, chosen_contrasts, n, first),
        chosen,
        out,
        protocol,
        machine_info(device),
        command,
        force,
        progress,
        done,
    )
    console.print(to_markdown(report), highlight=False, markup=False)
