"""Where a warm Registrator spends its time on benchmark cases: seconds per pair, per stage, and
torch.profiler's busiest operators, as a markdown report.

Usage: python scripts/profile_register.py [--device cpu|cuda] [--kinds us] [--n 5] [--seed 0]
       [--ndim 3] [--features mind|crosskey] [--no-refine] [--threads N] [--cache-images N] [--cold]
       [--out profile.md]

The cases are ``crossreg.evaluate.cases.synthetic_cases(kinds, n, seed, ndim)`` (``crossreg bench``'s
synthetic cases). One :class:`crossreg.Registrator` registers the first case once to load its models
(reported apart), then every case once, timed: the median seconds per pair (refused pairs too) and
each stage's median of ``Result.timings_s`` (registered pairs: a refusal has no Result). By default the
Registrator keeps the working grids and descriptions of the last two images it registered, and the
ultrasound cases share their fixed MRI; ``--cache-images 0`` keeps nothing, as for unrelated pairs. Then it
registers the first case again under torch.profiler, whose ``key_averages`` table (by CUDA time on
cuda, CPU time on cpu; 25 rows) ends the report. ``--cold`` also runs ``crossreg register`` in a
fresh interpreter on the first case's images, written to a temporary folder: its wall time includes
Python's and torch's import and the weights' loading.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from crossreg import RegisterConfig, Registrator, Result
from crossreg.errors import NoOverlapError, RegistrationFailed
from crossreg.evaluate.cases import BenchCase, synthetic_cases
from crossreg.evaluate.report import machine_info
from crossreg.imageio import load, save
from crossreg.refine import RefineConfig


def timed(run: Callable[[], Result | None], device: str) -> tuple[Result | None, float]:
    """``run()``'s result (None if refused) and its wall seconds, the device's queue drained."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    try:
        result = run()
    except (RegistrationFailed, NoOverlapError):
        result = None
    sync()
    return result, time.perf_counter() - start


def case_row(case: BenchCase, result: Result | None, seconds: float) -> str:
    """One markdown row: the case, its seconds, and its mean TRE, inliers and confidence."""
    if result is None:
        return f"| {case.name} | {seconds:.2f} | refused | | |"
    tre = float(case.landmark_errors_mm(result.transform).mean())
    return f"| {case.name} | {seconds:.2f} | {tre:.2f} | {result.n_inliers} | {result.confidence:.2f} |"


def stage_table(results: list[Result]) -> list[str]:
    """Markdown rows of each stage's median seconds over ``results``."""
    stages = dict.fromkeys(name for r in results for name in r.timings_s)
    rows = ["| stage | median s | runs |", "|---|---:|---:|"]
    for name in stages:
        seconds = [r.timings_s[name] for r in results if name in r.timings_s]
        rows.append(f"| {name} | {statistics.median(seconds):.3f} | {len(seconds)} |")
    return rows


def cold_cli(case: BenchCase, args: argparse.Namespace, registrator: Registrator) -> list[str]:
    """Markdown rows, wall seconds: ``crossreg register`` on the case's images in a fresh interpreter,
    the bare import of torch and crossreg's pipeline, and the warm ``registrator`` on the same files
    (a file stores spacing and origin as float32: the pair the CLI reads differs in the last bits)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    with tempfile.TemporaryDirectory(prefix="crossreg-profile-") as tmp:
        fixed, moving = Path(tmp) / "fixed.nii.gz", Path(tmp) / "moving.nii.gz"
        save(case.fixed, fixed)
        save(case.moving, moving)
        command = [sys.executable, "-m", "crossreg", "register", str(fixed), str(moving)]
        command += ["--out", str(Path(tmp) / "T.tfm"), "--device", args.device, "--features", args.features]
        command += ["--seed", str(args.seed), "--no-refine" if args.no_refine else "--refine"]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        cli = time.perf_counter() - start
        pair = load(fixed), load(moving)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, crossreg.register"], env=env, check=True)
    imports = time.perf_counter() - start
    warm, warm_s = timed(lambda: registrator.register(*pair), args.device)
    outcome = "refused" if warm is None else "registered"
    return [
        f"| `crossreg register` in a fresh interpreter (exit {done.returncode}) | {cli:.2f} |",
        f"| of which `import torch, crossreg.register` alone | {imports:.2f} |",
        f"| the warm Registrator on the same files ({outcome}) | {warm_s:.2f} |",
    ]


def markdown(
    args: argparse.Namespace,
    config: RegisterConfig,
    runs: list[tuple[BenchCase, Result | None, float]],
    load_s: float,
    cold: list[str] | None,
    profiled: str,
) -> str:
    """The report: machine, cases, the median seconds per pair and per stage, the cold CLI, the profile."""
    results = [r for _, r, _ in runs if r is not None]
    seconds = [s for _, _, s in runs]
    lines = [f"# Warm Registrator: {args.kinds} ({args.ndim}D) on {args.device}", ""]
    lines += [f"- {k}: {v}" for k, v in machine_info(args.device).items()]
    lines += [f"- command: `python {' '.join(sys.argv)}`", f"- config: `{config}`"]
    lines += [f"- images kept by the Registrator: {args.cache_images}", ""]
    lines += ["| case | seconds | mean TRE mm | inliers | confidence |", "|---|---:|---:|---:|---:|"]
    lines += [case_row(case, result, s) for case, result, s in runs]
    lines += ["", f"**Median {statistics.median(seconds):.2f} s per pair** over {len(runs)} warm runs"]
    lines += [f"({len(runs) - len(results)} refused); the first (loading the models): {load_s:.2f} s.", ""]
    lines += stage_table(results) if results else ["(every pair was refused: no stage timings)"]
    if cold is not None:
        lines += ["", "| the first case, from files | seconds |", "|---|---:|", *cold]
    lines += ["", f"torch.profiler, the first case registered warm once more, {profiled}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--kinds", default="us", help="comma-separated synthetic_cases kinds")
    parser.add_argument("--n", type=int, default=5, help="cases per kind, each registered once warm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ndim", type=int, default=3, choices=(2, 3))
    parser.add_argument("--features", default="mind", choices=("mind", "crosskey"))
    parser.add_argument("--no-refine", action="store_true", help="no intensity refinement")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--cache-images", type=int, default=2, help="images whose descriptions the Registrator keeps"
    )
    parser.add_argument("--cold", action="store_true", help="also time the cold CLI on the first case")
    parser.add_argument("--out", type=Path, default=Path("profile.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = args.kinds.split(",")
    cases = synthetic_cases(kinds, n_per_kind=args.n, seed=args.seed, ndim=args.ndim)
    refine = None if args.no_refine else RefineConfig()
    config = RegisterConfig(features=args.features, refine=refine, device=args.device, seed=args.seed)
    registrator = Registrator(config, cache_images=args.cache_images)
    first = cases[0]
    _, load_s = timed(lambda: registrator.register(first.fixed, first.moving), args.device)
    runs = [
        (case, *timed(lambda c=case: registrator.register(c.fixed, c.moving), args.device)) for case in cases
    ]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        timed(lambda: registrator.register(first.fixed, first.moving), args.device)
    sort_by = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=25)
    cold = cold_cli(first, args, registrator) if args.cold else None
    report = markdown(args, config, runs, load_s, cold, f"by {sort_by}:\n\n```text\n{table.rstrip()}\n```")
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
