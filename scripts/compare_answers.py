"""Whether a change of code changed crossreg's answers: register benchmark cases with a warm
Registrator, save each answer, and compare two saved runs.

Usage: python scripts/compare_answers.py save before.json [--device cpu] [--threads 2] [--cases cases.pkl]
       python scripts/compare_answers.py compare before.json after.json

``save`` registers the cases of :data:`RUNS` (synthetic_cases, seed 0: ultrasound cones with MIND-SSC and
refinement and with CrossKEY without it, T2 in 3D, T2 in 2D) and writes, per case, the decision
(accepted, or the error refusing it), the registration and RANSAC transforms' images of the fixed
landmarks (mm), confidence, inliers and stage timings. ``compare`` prints, per run, the decisions that
differ and the largest landmark difference (mm) between the two saved answers, and exits non-zero when
a decision differs or a landmark moved more than ``--tolerance-mm`` (0.1). ``--cases FILE`` reads the
cases from FILE (a pickle) if it exists, else writes them there: runs of two versions of the code then
register the very same images (a change of synthesis, or of a filter it uses, cannot blur the comparison).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

from crossreg import RegisterConfig, Registrator
from crossreg.errors import NoOverlapError, RegistrationFailed
from crossreg.evaluate.cases import BenchCase, synthetic_cases
from crossreg.refine import RefineConfig

#: name -> (kind, cases, ndim, features, refine)
RUNS = {
    "us-mind": ("us", 6, 3, "mind", True),
    "us-crosskey": ("us", 6, 3, "crosskey", False),
    "t2-mind": ("t2", 4, 3, "mind", True),
    "t2-2d": ("t2", 4, 2, "mind", True),
}


def cases_of(runs: list[str], cache: Path | None) -> dict[str, list[BenchCase]]:
    """The cases of each run, read from ``cache`` if it exists, else generated (and written there)."""
    if cache is not None and cache.exists():
        return pickle.loads(cache.read_bytes())
    cases = {}
    for name in runs:
        kind, n, ndim, _, _ = RUNS[name]
        cases[name] = synthetic_cases([kind], n_per_kind=n, seed=0, ndim=ndim)
    if cache is not None:
        cache.write_bytes(pickle.dumps(cases))
    return cases


def save(path: Path, device: str, runs: list[str], cache: Path | None) -> None:
    """Register every case of ``runs`` and write the answers to ``path`` (JSON)."""
    answers: dict[str, list[dict]] = {}
    cases = cases_of(list(RUNS), cache)
    for name in runs:
        _, _, _, features, refine = RUNS[name]
        config = RegisterConfig(features=features, refine=RefineConfig() if refine else None, device=device)
        registrator = Registrator(config)
        answers[name] = []
        for case in cases[name]:
            start = time.perf_counter()
            try:
                result = registrator.register(case.fixed, case.moving)
            except (RegistrationFailed, NoOverlapError) as err:
                row = {"case": case.name, "decision": type(err).__name__, "message": str(err)}
            else:
                row = {
                    "case": case.name,
                    "decision": "accepted",
                    "landmarks_mm": result.transform.apply(case.landmarks_fixed_mm).tolist(),
                    "ransac_landmarks_mm": result.ransac_transform.apply(case.landmarks_fixed_mm).tolist(),
                    "tre_mm": float(case.landmark_errors_mm(result.transform).mean()),
                    "confidence": result.confidence,
                    "n_inliers": result.n_inliers,
                    "ambiguity": result.ambiguity,
                    "round_trip": result.round_trip,
                    "agreement": result.agreement,
                    "timings_s": result.timings_s,
                }
            row["seconds"] = time.perf_counter() - start
            print(name, row["case"], row["decision"], f"{row['seconds']:.2f} s", flush=True)
            answers[name].append(row)
    path.write_text(json.dumps(answers, indent=1))


def compare(before: Path, after: Path, tolerance_mm: float) -> bool:
    """Print the differences between two saved runs; whether they agree within ``tolerance_mm``."""
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    same = True
    for name in a.keys() & b.keys():
        worst, worst_ransac, changed = 0.0, 0.0, []
        for x, y in zip(a[name], b[name], strict=True):
            if x["decision"] != y["decision"]:
                changed.append(f"{x['case']}: {x['decision']} -> {y['decision']}")
            elif x["decision"] == "accepted":
                worst = max(worst, _largest(x["landmarks_mm"], y["landmarks_mm"]))
                worst_ransac = max(worst_ransac, _largest(x["ransac_landmarks_mm"], y["ransac_landmarks_mm"]))
        seconds = [np.median([r["seconds"] for r in run[name]]) for run in (a, b)]
        accepted = sum(r["decision"] == "accepted" for r in a[name])
        print(
            f"{name}: {accepted}/{len(a[name])} accepted; decisions changed: {changed or 'none'}; largest "
            f"landmark difference {worst:.4f} mm (RANSAC's {worst_ransac:.4f} mm); median "
            f"{seconds[0]:.2f} -> {seconds[1]:.2f} s per pair"
        )
        same &= not changed and worst <= tolerance_mm
    return same


def _largest(p: list, q: list) -> float:
    return float(np.linalg.norm(np.asarray(p) - np.asarray(q), axis=1).max())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    saving = sub.add_parser("save")
    saving.add_argument("out", type=Path)
    saving.add_argument("--device", default="cpu")
    saving.add_argument("--threads", type=int)
    saving.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated of {', '.join(RUNS)}")
    saving.add_argument("--cases", type=Path, help="pickle of the cases: read if it exists, else written")
    comparing = sub.add_parser("compare")
    comparing.add_argument("before", type=Path)
    comparing.add_argument("after", type=Path)
    comparing.add_argument("--tolerance-mm", type=float, default=0.1)
    args = parser.parse_args()
    if args.command == "save":
        if args.threads:
            torch.set_num_threads(args.threads)
        save(args.out, args.device, args.runs.split(","), args.cases)
    elif not compare(args.before, args.after, args.tolerance_mm):
        sys.exit(1)


if __name__ == "__main__":
    main()
