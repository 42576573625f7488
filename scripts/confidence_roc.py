"""Does crossreg's confidence separate successes from failures? ROC of success (TRE < 3 mm) vs confidence.

Usage::

    python scripts/confidence_roc.py collect --ndim 3 --out docs/bench/confidence_3d.json   # ~6 min CPU
    python scripts/confidence_roc.py collect --ndim 2 --out docs/bench/confidence_2d.json   # ~1 min CPU
    python scripts/confidence_roc.py report docs/bench/confidence_3d.json docs/bench/confidence_2d.json

    # known negatives, learned features on a GPU, two seeds: fit a gate on one, test it on the other
    python scripts/confidence_roc.py collect --ndim 3 --kinds us,us-mirror,us-elsewhere,us-other \
        --n-per-kind 20 --seed 0 --features crosskey --device cuda --out v_seed0.json
    python scripts/confidence_roc.py collect ... --seed 1 --out v_seed1.json
    python scripts/confidence_roc.py report --fit v_seed0.json --test v_seed1.json

``collect`` runs crossreg (default configuration but ``--features`` and ``--device``, rigid) on the
benchmark's synthetic cases (``crossreg bench --kinds ... --n-per-kind ... --seed ...``: by default
``us,t2,ct,random``, 10 per kind, seed 0, the same cases as docs/bench/*/results.json) with RANSAC's
``min_inliers`` lowered to the minimal sample, its ``min_inlier_fraction`` and the ``min_confidence``
gate off, so that the cases the default refuses still give an answer whose quality signals can be
judged. Per case it records the confidence, the verify stage's round trip, ambiguity and agreement,
inlier and match counts, the inlier RMSE, the TRE, whether the default would refuse, and whether the
case is a known negative (``us-mirror``, ``us-elsewhere``, ``us-other``: any answer is wrong). The
file is rewritten after every case, so an interrupted run keeps what it did.

``report`` with files draws docs/img/confidence_roc.png and writes the "Failure detection" section of
docs/reliability.md. Two views are scored:

- *as shipped*: refusals (the default's gates) count as "not confident" (score 0);
- *answers only*: every answer RANSAC could give, refusal gate off: can the signal alone spot wrong ones?

``report --fit A.json ... --test B.json ...`` prints (markdown, nothing written) every signal's ROC
on both sets, a logistic model of success from ``--signals`` fitted on the ``--fit`` files (numpy
IRLS) and, at probability 0.5, the wrong answers accepted and the right answers refused on both sets,
by the default gates, by the model and by both; then the model's coefficients as constants.
A known negative is a failure everywhere: a success is an answer within 3 mm of the truth of a case
that has one.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from doc_sections import replace_section

from crossreg.config import MIN_AGREEMENT, RegisterConfig
from crossreg.errors import CrossregError
from crossreg.estimate import RansacConfig, estimate, sample_size
from crossreg.evaluate.baselines import MethodOutput
from crossreg.evaluate.cases import BENCH_KINDS, BenchCase, synthetic_cases
from crossreg.evaluate.scoring import SUCCESS_MM, score
from crossreg.features import FEATURES, make_features
from crossreg.plan import plan_pair
from crossreg.register import register

KINDS = ("us", "t2", "ct", "random")
#: The thresholds a user would read "confident" at: the report gives the false-confident rate at each.
THRESHOLDS = (0.5, 0.95)
#: The signals a logistic model is fitted on by default (``report --signals``).
MODEL_SIGNALS = ("confidence", "round_trip", "ambiguity", "agreement")


def lowered(config: RegisterConfig, ndim: int) -> RegisterConfig:
    """``config`` with every refusal gate off: RANSAC's at the minimal sample, no confidence gate."""
    k = sample_size(config.model, ndim)

    def loose(ransac: RansacConfig) -> RansacConfig:
        return replace(ransac, min_inliers=k, min_inlier_fraction=0.0)

    return replace(
        config,
        sparse=replace(config.sparse, ransac=loose(config.sparse.ransac)),
        dense=replace(config.dense, ransac=loose(config.dense.ransac)),
        matcher2d=replace(config.matcher2d, ransac=loose(config.matcher2d.ransac)),
        min_confidence=0.0,
        min_agreement=-1.0,
    )


def run_case(case: BenchCase, default: RegisterConfig) -> dict:
    """crossreg on ``case`` with the refusal gates lowered: its quality signals and TRE (None if none)."""
    config = lowered(default, case.ndim)
    plan = plan_pair(case.fixed, case.moving, default, make_features(default, case.ndim))
    gates = default.settings(plan.mode).ransac
    row = {
        "case": case.name,
        "kind": case.kind,
        "ndim": case.ndim,
        "negative": case.negative,
        "mode": plan.mode,
    }
    start = time.perf_counter()
    try:
        result = register(case.fixed, case.moving, config)
    except CrossregError as err:
        return row | {"answered": False, "refused_by_default": True, "message": str(err), "tre_mm": None}
    scored = score(case, "crossreg", MethodOutput(result.transform, time.perf_counter() - start))
    # The same RANSAC again (same seed: same result) for its chance-only confidence, crossreg's before
    # the determination factor (crossreg.estimate) was added.
    loose = config.settings(plan.mode).ransac
    found = estimate(result.fixed_points_mm, result.moving_points_mm, config.model, loose, config.seed)
    return row | {
        "answered": True,
        "refused_by_default": result.n_inliers < gates.min_inliers
        or result.n_inliers < gates.min_inlier_fraction * result.n_matches
        or result.confidence < default.min_confidence,
        "confidence": result.confidence,
        "chance_confidence": found.confidence,
        "round_trip": result.round_trip,
        "ambiguity": result.ambiguity,
        "agreement": result.agreement,
        "n_inliers": result.n_inliers,
        "n_matches": result.n_matches,
        "rmse_mm": result.rmse_mm,
        "tre_mm": scored.tre_mm,
        "seconds": scored.seconds,
    }


def collect(
    kinds: list[str], ndim: int, n_per_kind: int, seed: int, config: RegisterConfig, out: Path
) -> None:
    """Run every case of ``kinds`` (``ndim``-D, ``seed``) and write the per-case rows (JSON) to ``out``,
    after each case."""
    doc = {
        "command": "python scripts/confidence_roc.py " + shlex.join(sys.argv[1:]),
        "success_mm": SUCCESS_MM,
        "ransac_min_inliers_default": RansacConfig().min_inliers,
        "features": config.features,
        "device": config.device,
        "seed": seed,
        "cases": [],
    }
    for case in synthetic_cases(kinds, n_per_kind, seed=seed, ndim=ndim):
        doc["cases"].append(run_case(case, config))
        r = doc["cases"][-1]
        print(
            f"{r['case']}: TRE {r['tre_mm']}, confidence {r.get('confidence')}, round trip "
            f"{r.get('round_trip')}, ambiguity {r.get('ambiguity')}, agreement {r.get('agreement')}",
            file=sys.stderr,
        )
        out.write_text(json.dumps(doc, indent=1) + "\n")


# ---------------------------------------------------------------- analysis

#: Each signal's score of an answered case: higher says "more likely right".
SIGNALS: dict[str, Callable[[dict], float]] = {
    "confidence": lambda r: r["confidence"],
    "chance_confidence": lambda r: r["chance_confidence"],
    "n_inliers": lambda r: r["n_inliers"],
    "inlier_ratio": lambda r: r["n_inliers"] / r["n_matches"],
    "round_trip": lambda r: r["round_trip"],
    "1-ambiguity": lambda r: 1.0 - r["ambiguity"],
    "agreement": lambda r: r["agreement"],
}


def success(rows: list[dict]) -> np.ndarray:
    """(N,) bool: the case was answered with TRE below SUCCESS_MM, and is no known negative."""
    return np.array(
        [r["answered"] and r["tre_mm"] < SUCCESS_MM and not r.get("negative") for r in rows], dtype=bool
    )


def available(rows: list[dict]) -> list[str]:
    """The SIGNALS every answered row has (files collected before a signal existed lack it)."""

    def has(name: str) -> bool:
        try:
            [SIGNALS[name](r) for r in rows if r["answered"]]
        except KeyError:
            return False
        return True

    return [name for name in SIGNALS if has(name)]


def signal(rows: list[dict], name: str, as_shipped: bool) -> np.ndarray:
    """(N,) score of ``name`` per case; for no answer (and, ``as_shipped``, for default refusals) 0, or
    below every answer where answers score below 0."""
    refused = np.array([not r["answered"] or (as_shipped and r["refused_by_default"]) for r in rows])
    scores = np.array(
        [np.nan if no else float(SIGNALS[name](r)) for r, no in zip(rows, refused, strict=True)]
    )
    lowest = np.nanmin(scores, initial=0.0)
    return np.where(refused, 0.0 if lowest >= 0 else lowest - 1.0, scores)


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
        for name in available(rows):
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
    seeds = " and ".join(str(v) for v in sorted({d.get("seed", 0) for d in sets.values()}))
    return _markdown(rows, ok, lines, [d["command"] for d in sets.values()], seeds, png, doc)


def _markdown(
    rows: list[dict], ok: np.ndarray, lines: list, commands: list[str], seeds: str, png: Path, doc: Path
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

    kinds = ", ".join(dict.fromkeys(r["kind"] for r in rows))
    out = [
        f"{len(rows)} benchmark cases ({kinds}; {' and '.join(dims)}; seed {seeds}): {int(ok.sum())} "
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


# ---------------------------------------------------------------- a gate fitted on one set, tested on another


def load_rows(paths: list[Path]) -> list[dict]:
    return [r for p in paths for r in json.loads(p.read_text())["cases"]]


def design(rows: list[dict], names: tuple[str, ...]) -> np.ndarray:
    """(N, k) the raw signals ``names`` of each case; NaN for no answer."""
    return np.array([[float(r[n]) if r["answered"] else np.nan for n in names] for r in rows]).reshape(
        len(rows), -1
    )


def fit_logistic(
    x: np.ndarray, y: np.ndarray, ridge: float, failure_weight: float
) -> tuple[float, np.ndarray]:
    """``(bias, weights (k,))`` of ``P[y] = sigmoid(bias + x @ weights)`` for raw signals ``x`` ``(N, k)``:
    IRLS (Newton) on standardised signals with an L2 penalty ``ridge`` (not on the bias), failures
    (y False) weighted ``failure_weight``; returned in the signals' own units."""
    mean, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.c_[np.ones(len(x)), (x - mean) / sd]
    case_weight = np.where(y, 1.0, failure_weight)
    penalty = ridge * np.diag(np.r_[0.0, np.ones(x.shape[1])])
    w = np.zeros(z.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        hessian = z.T @ ((case_weight * p * (1 - p))[:, None] * z) + penalty
        step = np.linalg.solve(hessian, z.T @ (case_weight * (y - p)) - penalty @ w)
        w += step
        if np.abs(step).max() < 1e-10:
            break
    weights = w[1:] / sd
    return float(w[0] - weights @ mean), weights


def probability(rows: list[dict], names: tuple[str, ...], bias: float, weights: np.ndarray) -> np.ndarray:
    """(N,) the model's probability of success; 0 for no answer."""
    logit = bias + design(rows, names) @ weights
    return np.where(np.isnan(logit), 0.0, 1.0 / (1.0 + np.exp(-np.nan_to_num(logit))))


#: Ways of accepting an answer the report compares: the inlier and confidence gates, the model at 0.5,
#: both, and the shipped gates (those and ``agreement >= MIN_AGREEMENT``).
POLICIES = ("confidence gates", "model p >= 0.5", "both", f"shipped (agreement >= {MIN_AGREEMENT:g})")


def accepted(rows: list[dict], p: np.ndarray) -> dict[str, np.ndarray]:
    """(N,) bool per way of POLICIES: which answers it accepts, given the model's probabilities."""
    gates = np.array([r["answered"] and not r["refused_by_default"] for r in rows], dtype=bool)
    agree = np.array([r["answered"] and r["agreement"] >= MIN_AGREEMENT for r in rows], dtype=bool)
    return dict(zip(POLICIES, (gates, p >= 0.5, gates & (p >= 0.5), gates & agree), strict=True))


def outcome(rows: list[dict], accept: np.ndarray) -> str:
    """Wrong answers accepted (of them known negatives, worst TRE) / right answers refused, as text."""
    ok, negative = success(rows), np.array([bool(r.get("negative")) for r in rows], bool)
    wrong = accept & ~ok
    tre = np.array([np.nan if r["tre_mm"] is None else r["tre_mm"] for r in rows], float)
    worst = f", worst {np.nanmax(tre[wrong]):.0f} mm" if wrong.any() else ""
    return f"{int(wrong.sum())} ({int((wrong & negative).sum())} neg.{worst}) / {int((ok & ~accept).sum())}"


def calibrate(
    fit: list[Path], test: list[Path], names: tuple[str, ...], ridge: float, failure_weight: float
) -> str:
    """The markdown report of ``report --fit ... --test ...`` (module docstring)."""
    sets = {"fit": load_rows(fit), "test": load_rows(test)}
    for label, rows in sets.items():
        if missing := [n for n in names if any(r["answered"] and n not in r for r in rows)]:
            raise SystemExit(f"the {label} files lack the signals {missing}: collect them again")
    x, y = design(sets["fit"], names), success(sets["fit"])
    answered = ~np.isnan(x).any(axis=1)
    bias, weights = fit_logistic(x[answered], y[answered], ridge, failure_weight)
    p = {label: probability(rows, names, bias, weights) for label, rows in sets.items()}
    out = [
        f"fit: {' '.join(map(str, fit))}; test: {' '.join(map(str, test))}. A success is an answer within "
        f"{SUCCESS_MM:g} mm on a case that has a right answer; known negatives are failures.",
        "",
    ]
    for label, rows in sets.items():
        kinds = ", ".join(dict.fromkeys(r["kind"] for r in rows))
        n_right, n_negative = int(success(rows).sum()), sum(bool(r.get("negative")) for r in rows)
        out.append(
            f"- {label}: {len(rows)} cases ({kinds}); right answers: {n_right}; negatives: {n_negative}"
        )
    out += _auc_table(sets, p)
    out += ["", "Agreement, where the threshold goes:", ""]
    out += [f"- {label}: {_agreement_gap(rows)}" for label, rows in sets.items()]
    out += [
        "",
        f"Logistic model of success from {', '.join(names)}, fitted on the fit set's {int(answered.sum())} "
        f"answers (ridge {ridge:g}, failures weighted {failure_weight:g}). Per kind: wrong answers accepted "
        "(of them known negatives, worst TRE) / right answers refused:",
        "",
    ]
    out += _outcome_table(sets, p)
    constants = ", ".join(f'"{n}": {w:.6g}' for n, w in zip(names, weights, strict=True))
    return "\n".join(
        [*out, "", "```python", f"GATE_BIAS = {bias:.6g}", f"GATE_WEIGHTS = {{{constants}}}", "```"]
    )


def _agreement_gap(rows: list[dict]) -> str:
    """The agreement of right answers (range), and that of every answer the confidence gates accept that
    is wrong (with its kind and TRE), highest first, as text."""
    right = [r["agreement"] for r, ok in zip(rows, success(rows), strict=True) if ok]
    wrong = [
        (r["agreement"], r["kind"], r["tre_mm"])
        for r, ok in zip(rows, success(rows), strict=True)
        if r["answered"] and not r["refused_by_default"] and not ok
    ]
    span = f"right answers {min(right):.3f} to {max(right):.3f}" if right else "no right answer"
    listed = ", ".join(f"{a:.3f} ({kind}, {tre:.1f} mm)" for a, kind, tre in sorted(wrong, reverse=True))
    return f"{span}; wrong answers the confidence gates accept, highest first: {listed or 'none'}"


def _auc_table(sets: dict[str, list[dict]], p: dict[str, np.ndarray]) -> list[str]:
    """AUC of every signal and of the model, as shipped and over all answers, on each set."""
    head = " | ".join(f"{label}: {view}" for label in sets for view in ("as shipped", "answers"))
    out = ["", "AUC of success vs each signal (as shipped: default refusals score lowest):", ""]
    out += [f"| signal | {head} |", "|---|" + "---|" * 2 * len(sets)]
    for name in [*available(sets["fit"]), "model"]:
        cells = []
        for label, rows in sets.items():
            for as_shipped in (True, False):
                if name == "model":
                    scores = np.where(
                        accepted(rows, p[label])["confidence gates"] | (not as_shipped), p[label], 0.0
                    )
                else:
                    scores = signal(rows, name, as_shipped)
                cells.append(f"{roc(scores, success(rows))[2]:.3f}")
        out.append(f"| {name} | {' | '.join(cells)} |")
    return out


def _outcome_table(sets: dict[str, list[dict]], p: dict[str, np.ndarray]) -> list[str]:
    """Per kind and overall, each policy's wrong answers accepted and right answers refused, per set."""
    head = " | ".join(f"{label}: {policy}" for label in sets for policy in POLICIES)
    out = [f"| kind | cases (fit/test) | {head} |", "|---|---|" + "---|" * len(POLICIES) * len(sets)]
    kinds = list(dict.fromkeys(r["kind"] for rows in sets.values() for r in rows))
    for kind in [*kinds, "all"]:
        cells, counts = [], []
        for label, rows in sets.items():
            mine = np.array([kind in ("all", r["kind"]) for r in rows], bool)
            picked = [r for r, m in zip(rows, mine, strict=True) if m]
            cells += [outcome(picked, a[mine]) for a in accepted(rows, p[label]).values()]
            counts.append(str(int(mine.sum())))
        out.append(f"| {kind} | {'/'.join(counts)} | {' | '.join(cells)} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--ndim", type=int, choices=(2, 3), required=True)
    c.add_argument("--kinds", default=",".join(KINDS), help="comma-separated bench kinds")
    c.add_argument("--n-per-kind", type=int, default=10)
    c.add_argument("--seed", type=int, default=0, help="of the cases and of crossreg")
    c.add_argument("--features", choices=tuple(FEATURES), default="mind")
    c.add_argument("--device", default="cpu", help="torch device of crossreg: cpu, cuda, cuda:N")
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report")
    r.add_argument("paths", type=Path, nargs="*", help="files whose section docs/reliability.md gets")
    r.add_argument("--png", type=Path, default=Path("docs/img/confidence_roc.png"))
    r.add_argument("--doc", type=Path, default=Path("docs/reliability.md"))
    r.add_argument("--fit", type=Path, nargs="+", help="files to fit a gate on (prints, writes nothing)")
    r.add_argument("--test", type=Path, nargs="+", help="files to test it on (a held-out seed)")
    r.add_argument("--signals", default=",".join(MODEL_SIGNALS), help="the model's signals, comma-separated")
    r.add_argument("--ridge", type=float, default=1.0, help="L2 penalty on standardised weights")
    r.add_argument("--failure-weight", type=float, default=1.0, help="weight of a failure in the fit")
    args = parser.parse_args()
    if args.what == "collect":
        kinds = [k for k in args.kinds.split(",") if k]
        if unknown := set(kinds) - set(BENCH_KINDS):
            parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(BENCH_KINDS)}")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch sees no CUDA device")
        config = RegisterConfig(features=args.features, device=args.device, seed=args.seed)
        collect(kinds, args.ndim, args.n_per_kind, args.seed, config, args.out)
    elif args.fit or args.test:
        if not (args.fit and args.test) or args.paths:
            parser.error("give both --fit and --test files, and no others")
        names = tuple(n for n in args.signals.split(",") if n)
        print(calibrate(args.fit, args.test, names, args.ridge, args.failure_weight))
    elif args.paths:
        replace_section(args.doc, "failure-detection", report(args.paths, args.png, args.doc))
    else:
        parser.error("report needs files, or --fit and --test files")


if __name__ == "__main__":
    main()
