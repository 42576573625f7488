"""Benchmark runner: every method on every case, scored (crossreg.evaluate.scoring) and written as
results.json, results.md and tre.png (crossreg.evaluate.report).

The CLI's ``crossreg bench`` calls :func:`run_bench`; a script does the same::

    from crossreg.evaluate import bench, cases
    report = bench.run_bench(cases.synthetic_cases(("t2", "ct", "random"), 10), out_dir="bench/")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from crossreg.evaluate.baselines import Method, MethodOutput, default_methods
from crossreg.evaluate.cases import BenchCase
from crossreg.evaluate.report import machine_info, write_report
from crossreg.evaluate.scoring import BenchReport, CaseResult, score, summarize

log = logging.getLogger(__name__)

#: Called after each (case, method) run with (runs done, runs in all, one line about the run).
Progress = Callable[[int, int, str], None]


def _run_one(method: Method, case: BenchCase, seed: int) -> MethodOutput:
    try:
        return method.run(case.fixed, case.moving, seed)
    # A benchmark of many runs records a crash of one baseline as that run's failure instead of losing
    # the others; the message (with the error type) goes into the report.
    except Exception as err:
        log.exception("%s crashed on %s", method.name, case.name)
        return MethodOutput(None, float("nan"), None, f"{type(err).__name__}: {err}")


def run_cases(
    cases: Sequence[BenchCase], methods: Sequence[Method], seed: int = 0, on_progress: Progress | None = None
) -> list[CaseResult]:
    """Every method on every case of its dimensions, case by case; methods are assumed runnable (see
    Method.missing)."""
    runs = [(case, method) for case in cases for method in methods if case.fixed.ndim in method.ndims]
    results, total = [], len(runs)
    for case, method in runs:
        result = score(case, method.name, _run_one(method, case, seed))
        results.append(result)
        if on_progress is not None:
            outcome = f"failed ({result.failed})" if result.failed else f"TRE {result.tre_mm:.2f} mm"
            on_progress(len(results), total, f"{case.name} {method.name}: {outcome}, {result.seconds:.1f} s")
    return results


def run_bench(
    cases: Sequence[BenchCase],
    methods: Sequence[Method] | None = None,
    out_dir: str | Path = "bench",
    device: str = "cpu",
    seed: int = 0,
    command: str = "",
    on_progress: Progress | None = None,
) -> BenchReport:
    """Run ``methods`` (:func:`default_methods` on ``device`` if None) on ``cases``; write the report.

    Methods whose optional package is missing are skipped and listed as such. Writes
    ``out_dir/results.json``, ``results.md`` and ``tre.png`` atomically; ``command`` is recorded in
    them (e.g. the CLI line). ``seed`` is passed to every method on every case.
    """
    methods = default_methods(device) if methods is None else list(methods)
    skipped = {m.name: reason for m in methods if (reason := m.missing()) is not None}
    runnable = [m for m in methods if m.name not in skipped]
    results = run_cases(cases, runnable, seed, on_progress)
    report = BenchReport(tuple(results), tuple(summarize(results)), skipped, machine_info(device), command)
    return write_report(report, Path(out_dir))
