"""Does crossreg's confidence separate successes from failures? ROC of success (TRE < 3 mm) vs confidence.

Usage::

    python scripts/confidence_roc.py collect --ndim 3 --out docs/bench/confidence_3d.json   # ~6 min CPU
    python scripts/confidence_roc.py collect --ndim 2 --out docs/bench/confidence_2d.json   # ~1 min CPU
    python scripts/confidence_roc.py report docs/bench/confidence_3d.json docs/bench/confidence_2d.json

``collect`` runs crossreg (default configuration, MIND features, rigid) on the benchmark's synthetic
cases (``crossreg bench --kinds us,t2,ct,random --n-per-kind 10``, seed 0: the same cases as
docs/bench/*/results.json) with RANSAC's ``min_inliers`` lowered to the minimal sample and the
``min_confidence`` gate off, so that the cases the default refuses still give an answer whose quality
signals can be judged. Per case it records the
confidence, inlier and match counts, the inlier RMSE and the TRE, and whether the default would refuse.

``report`` draws docs/img/confidence_roc.png and writes the "Failure detection" section of
docs/reliability.md. Two views are scored:

- *as shipped*: refusals (fewer than ``min_inliers`` inliers) count as "not confident" (score 0);
- *answers only*: every answer RANSAC could give, refusal gate off: can the signal alone spot wrong ones?
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from doc_sections import replace_section

from crossreg.config import RegisterConfig
from crossreg.errors import CrossregError
from crossreg.estimate import RansacConfig, estimate, sample_size
from crossreg.evaluate.baselines import MethodOutput
from crossreg.evaluate.cases import BenchCase, synthetic_cases
from crossreg.evaluate.scoring import SUCCESS_MM, score
from crossreg.register import register

KINDS = ("us", "t2", "ct", "random")
#: The thresholds a user would read "confident" at: the report gives the false-confident rate at each.
THRESHOLDS = (0.5, 0.95)
SIGNALS = ("confidence", "chance_confidence", "n_inliers", "inlier_ratio")


def run_case(case: BenchCase, seed: int = 0) -> dict:
    """crossreg on ``case`` with the refusal gate lowered: its quality signals and TRE (NaN if none)."""
    default = RegisterConfig()
    k = sample_size(default.model, case.ndim)
    config = replace(default, ransac=replace(default.ransac, min_inliers=k), min_confidence=0.0, seed=seed)
    start = time.perf_counter()
    row = {"case": case.name, "kind": case.kind, "ndim": case.ndim}
    try:
        result = register(case.fixed, case.moving, config)
    except CrossregError as err:
        return row | {"answered": False, "refused_by_default": True, "message": str(err), "tre_mm": None}
    scored = score(case, "crossreg", MethodOutput(result.transform, time.perf_counter() - start))
    # The same RANSAC again (same seed: same result) for its chance-only confidence, crossreg's before
    # the determination factor (crossreg.estimate) was added.
    found = estimate(result.fixed_points_mm, result.moving_points_mm, config.model, config.ransac, seed)
    return row | {
        "answered": True,
        "refused_by_default": result.n_inliers < default.ransac.min_inliers
        or result.confidence < default.min_confidence,
        "confidence": result.confidence,
        "chance_confidence": found.confidence,
        "n_inliers": result.n_inliers,
        "n_matches": result.n_matches,
        "rmse_mm": result.rmse_mm,
        "tre_mm": scored.tre_mm,
        "seconds": scored.seconds,
    }


def collect(ndim: int, n_per_kind: int, out: Path) -> None:
    """Run every benchmark case of ``ndim`` and write the per-case rows (JSON) to ``out``."""
    rows = []
    for case in synthetic_cases(KINDS, n_per_kind, seed=0, ndim=ndim):
        rows.append(run_case(case))
        r = rows[-1]
        print(f"{r['case']}: TRE {r['tre_mm']}, confidence {r.get('confidence')}", file=sys.stderr)
    doc = {
        "command": "python scripts/confidence_roc.py " + shlex.join(sys.argv[1:]),
        "success_mm": SUCCESS_MM,
        "ransac_min_inliers_default": RansacConfig().min_inliers,
        "cases": rows,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")


# ---------------------------------------------------------------- analysis


def success(rows: list[dict]) -> np.ndarray:
    """(N,) bool: the case was answered with TRE below SUCCESS_MM."""
    return np.array([r["answered"] and r["tre_mm"] < SUCCESS_MM for r in rows])


def signal(rows: list[dict], name: str, as_shipped: bool) -> np.ndarray:
    """(N,) score of ``name`` per case; 0 for no answer (and, ``as_shipped``, for default refusals)."""
    out = []
    for r in rows:
        refused = not r["answered"] or (as_shipped and r["refused_by_default"])
        if refused:
            out.append(0.0)
        elif name == "inlier_ratio":
            out.append(r["n_inliers"] / r["n_matches"])
        else:
            out.append(float(r[name]))
    return np.array(out)


def roc(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False- and true-positive rates over every threshold (descending), and the AUC (ties count half)."""
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    cut = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp, fp = np.cumsum(p)[cut], np.cumsum(~p)[cut]
    n_pos, n_neg = max(int(p.sum()), 1), max(int((~p).sum()), 1)
    tpr, fpr = np.r_[0.0, tp / n_pos], np.r_[0.0, fp / n_neg]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def safe_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The lowest threshold above which no failure scores (the max failure score), or 0 with none."""
    return float(scores[~positive].max()) if (~positive).any() else 0.0


def report(paths: list[Path], png: Path, doc: Path) -> str:
    """Plot the ROC curves to ``png``, return the markdown section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = {p: json.loads(p.read_text()) for p in paths}
    rows = [r for d in sets.values() for r in d["cases"]]
    ok = success(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    lines = []
    for ax, as_shipped in zip(axes, (True, False), strict=True):
        view = "as shipped (refusals = 0)" if as_shipped else "answers only (gate off)"
        for name in SIGNALS:
            fpr, tpr, auc = roc(signal(rows, name, as_shipped), ok)
            ax.step(fpr, tpr, where="post", label=f"{name}: AUC {auc:.3f}")
            lines.append((view, name, auc, safe_threshold(signal(rows, name, as_shipped), ok)))
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(
            title=view, xlabel="false-positive rate (failures called confident)", ylabel="true-positive rate"
        )
        ax.legend(loc="lower right")
    fig.suptitle(f"crossreg success (TRE < {SUCCESS_MM:g} mm) vs quality signal, {len(rows)} bench cases")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return _markdown(rows, ok, lines, [d["command"] for d in sets.values()], png, doc)


def _markdown(
    rows: list[dict], ok: np.ndarray, lines: list, commands: list[str], png: Path, doc: Path
) -> str:
    shipped = signal(rows, "confidence", True)
    answers = signal(rows, "confidence", False)
    answered = np.array([r["answered"] for r in rows])
    n_fail, n_wrong = int((~ok).sum()), int((answered & ~ok).sum())
    dims = sorted({f"{r['ndim']}D" for r in rows})
    tre = np.array([np.nan if r["tre_mm"] is None else r["tre_mm"] for r in rows])

    def confident(scores: np.ndarray, t: float) -> str:
        wrong = ~ok & (scores >= t)
        worst = f", worst TRE {np.nanmax(tre[wrong]):.1f} mm" if wrong.any() else ""
        return f"{int(wrong.sum())}/{n_fail}{worst}"

    out = [
        f"{len(rows)} benchmark cases ({', '.join(KINDS)}; {' and '.join(dims)}; seed 0): {int(ok.sum())} "
        "successes, "
        f"{n_fail} failures, of which {n_wrong} are wrong answers crossreg gives when its refusal gates "
        f"(min_inliers = {RansacConfig().min_inliers}, min_confidence = {RegisterConfig().min_confidence:g})"
        f" are lowered and {n_fail - n_wrong} have no answer at all.",
        "",
        f"![ROC of success vs quality signal]({png.relative_to(doc.parent).as_posix()})",
        "",
        "| view | signal | AUC | lowest threshold above every failure |",
        "|---|---|---|---|",
        *(f"| {v} | {n} | {auc:.3f} | {thr:.6g} |" for v, n, auc, thr in lines),
        "",
        "False-confident rate (failures with confidence at or above the threshold, over all failures):",
        "",
        "| threshold | as shipped | answers only |",
        "|---|---|---|",
        *(f"| {t} | {confident(shipped, t)} | {confident(answers, t)} |" for t in THRESHOLDS),
        "",
        "Per failure (TRE in mm; `-` no answer):",
        "",
        "| case | TRE | inliers/matches | confidence | refused by default |",
        "|---|---|---|---|---|",
    ]
    for r, good in zip(rows, ok, strict=True):
        if not good:
            tre = "-" if r["tre_mm"] is None else f"{r['tre_mm']:.1f}"
            counts = f"{r['n_inliers']}/{r['n_matches']}" if r["answered"] else "-"
            conf = f"{r['confidence']:.6f}" if r["answered"] else "-"
            out.append(f"| {r['case']} | {tre} | {counts} | {conf} | {r['refused_by_default']} |")
    out += [
        "",
        "Produced by:",
        "",
        "```",
        *commands,
        "python scripts/confidence_roc.py " + shlex.join(sys.argv[1:]),
    ]
    return "\n".join([*out, "```"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--ndim", type=int, choices=(2, 3), required=True)
    c.add_argument("--n-per-kind", type=int, default=10)
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report")
    r.add_argument("paths", type=Path, nargs="+")
    r.add_argument("--png", type=Path, default=Path("docs/img/confidence_roc.png"))
    r.add_argument("--doc", type=Path, default=Path("docs/reliability.md"))
    args = parser.parse_args()
    if args.what == "collect":
        collect(args.ndim, args.n_per_kind, args.out)
    else:
        replace_section(args.doc, "failure-detection", report(args.paths, args.png, args.doc))


if __name__ == "__main__":
    main()
