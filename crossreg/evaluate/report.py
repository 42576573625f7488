"""Benchmark report files: results.json (everything), results.md (tables a reader acts on), tre.png."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from crossreg.evaluate.scoring import AUC_MM, PRECISION_MM, SUCCESS_MM, BenchReport, KindSummary
from crossreg.outputs import atomic_write, atomic_write_text

_PACKAGES = ("crossreg", "torch", "SimpleITK", "numpy", "antspyx", "itk-elastix")


def machine_info(device: str = "cpu") -> dict[str, str]:
    """CPU model and core count, torch device, package versions, date: what the timings depend on."""
    import torch

    cores = f"{os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} threads"
    info = {
        "cpu": f"{_cpu_model()} ({cores})",
        "device": device,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device"] = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    for package in _PACKAGES:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform below
    return platform.processor() or platform.machine()


def write_report(report: BenchReport, out_dir: Path) -> BenchReport:
    """Write results.json, results.md and tre.png into ``out_dir`` atomically; the report with their paths."""
    paths = (out_dir / "results.json", out_dir / "results.md", out_dir / "tre.png")
    atomic_write_text(paths[0], json.dumps(to_json(report), indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths[1], to_markdown(report))
    figure = tre_figure(report)
    atomic_write(paths[2], lambda tmp: figure.savefig(tmp, dpi=120))
    return replace(report, files=paths)


def json_safe(value):
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def to_json(report: BenchReport) -> dict:
    """The whole report as plain JSON data (NaN as null)."""
    return json_safe(
        {
            "command": report.command,
            "machine": report.machine,
            "success_mm": SUCCESS_MM,
            "precision_mm": PRECISION_MM,
            "auc_mm": list(AUC_MM),
            "skipped": report.skipped,
            "summaries": [asdict(s) for s in report.summaries],
            "failures": {
                m: [{"case": c, "message": msg} for c, msg in f] for m, f in report.failures().items()
            },
            "results": [asdict(r) for r in report.results],
        }
    )


def format_mm(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.2f}"


def _row(s: KindSummary) -> str:
    precision = "–" if s.precision is None else f"{100 * s.precision:.0f}%"
    folded = "–" if s.folded is None else f"{100 * s.folded:.3f}%"
    auc = " | ".join(f"{100 * a:.1f}%" for a in s.auc)
    return (
        f"| {s.method} | {format_mm(s.mean_mm)} | {format_mm(s.median_mm)} | {format_mm(s.p90_mm)} | "
        f"{100 * s.success_rate:.0f}% | {auc} | {precision} | {s.median_seconds:.1f} | {s.n_failed} | "
        f"{s.n_wrong} | {folded} |"
    )


def to_markdown(report: BenchReport) -> str:
    """Per-kind tables of TRE, success, AUC, precision and time, then failures and skipped methods."""
    m = report.machine
    lines = [
        "# crossreg benchmark",
        "",
        f"- command: `{report.command or '(Python API)'}`",
        f"- machine: {m.get('cpu', '?')}; torch device {m.get('device', '?')}; {m.get('date', '')}",
        "- versions: " + ", ".join(f"{p} {m[p]}" for p in _PACKAGES if p in m),
        f"- TRE: mean landmark error (mm) of the cases a method returned a transform for; success: TRE at "
        f"most {SUCCESS_MM:g} mm, failures counted as unsuccessful; AUC@t: area under the cumulative curve "
        "of the cases' TRE up to t mm, normalised (the mean of max(0, 1 - TRE/t), a failure counting as an "
        "infinite TRE); precision: putative matches within "
        f"{PRECISION_MM:g} mm of the truth; failed: no transform returned; wrong: a transform returned with "
        f"a TRE above {SUCCESS_MM:g} mm (crossreg returns only answers that passed its confidence and "
        "agreement checks); "
        "on known negatives (us-mirror, us-elsewhere: no transform is right) success is a "
        "refusal and every transform returned is wrong; "
        "folded: share of the fixed "
        "field of view where a deformable transform's Jacobian determinant is <= 0.",
    ]
    columns = ["method", "mean TRE", "median", "p90", "success", *(f"AUC@{t:g} mm" for t in AUC_MM)]
    columns += ["precision", "median s", "failed", "wrong", "folded"]
    for kind in dict.fromkeys(s.kind for s in report.summaries):
        rows = [s for s in report.summaries if s.kind == kind]
        lines += [
            "",
            f"## {kind}: {rows[0].n_cases} cases, initial TRE {format_mm(rows[0].initial_mean_mm)} mm",
            "",
            "| " + " | ".join(columns) + " |",
            "|---" + "|---:" * (len(columns) - 1) + "|",
            *(_row(s) for s in rows),
        ]
    lines += _failure_lines(report)
    return "\n".join(lines) + "\n"


def _failure_lines(report: BenchReport) -> list[str]:
    lines = []
    failures = report.failures()
    if failures:
        lines += ["", "## Failures", ""]
        for method, items in failures.items():
            lines += [f"- **{method}** ({len(items)}):"]
            lines += [f"  - {case}: {' '.join(msg.split())[:300]}" for case, msg in items]
    if report.skipped:
        lines += ["", "## Not run", ""]
        lines += [f"- {name}: {reason}" for name, reason in report.skipped.items()]
    return lines


def tre_figure(report: BenchReport) -> Figure:
    """One panel per case kind: per-case TRE of each method (log scale), failures as red x at the top."""
    kinds = list(dict.fromkeys(r.kind for r in report.results)) or ["(no cases)"]
    methods = ["initial", *dict.fromkeys(r.method for r in report.results)]
    fig = Figure(figsize=(1.2 + 0.9 * len(methods), 3.0 * len(kinds)), layout="constrained")
    axes = fig.subplots(len(kinds), 1, squeeze=False)[:, 0]
    rng = np.random.default_rng(0)
    for ax, kind in zip(axes, kinds, strict=True):
        rows = [r for r in report.results if r.kind == kind]
        initial = {r.case: r.initial_tre_mm for r in rows}
        values = [list(initial.values()), *([r.tre_mm for r in rows if r.method == m] for m in methods[1:])]
        finite = [v for vs in values for v in vs if math.isfinite(v) and v > 0]
        top = 2.0 * max(finite, default=10.0)
        for i, vals in enumerate(values):
            v = np.array(vals, float)
            x = i + rng.uniform(-0.15, 0.15, v.size)
            ok = np.isfinite(v)
            ax.scatter(x[ok], np.maximum(v[ok], 1e-2), s=12, alpha=0.7, color="C0")
            ax.scatter(x[~ok], np.full((~ok).sum(), top), s=20, marker="x", color="C3")
            if ok.any():
                ax.hlines(np.median(v[ok]), i - 0.3, i + 0.3, color="k", linewidth=1.5)
        ax.axhline(SUCCESS_MM, color="C2", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
        ax.set_ylabel("TRE (mm)")
        ax.set_title(f"{kind}: per-case TRE (bar: median; x: failed; dashed: {SUCCESS_MM:g} mm)", fontsize=9)
    return fig
