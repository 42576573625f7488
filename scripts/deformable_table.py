"""The "Deformable registration (brain shift)" table of docs/benchmarks.md from a ``crossreg bench``
results.json of the deformable methods: TRE per method, the share of the TRE left after crossreg's
rigid that each removes (all cases; cases where the rigid did not fail grossly, TRE < 10 mm),
folding and seconds.

    python scripts/deformable_table.py docs/bench/deformable/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

METHODS = {
    "crossreg-rigid": "crossreg rigid",
    "crossreg-deformable": "crossreg deformable",
    "ants-syn-from-rigid": "ANTs SyN from rigid",
    "elastix-bspline-from-rigid": "elastix B-spline from rigid",
}
RIGID_OK_MM = 10.0


def _tre(row: dict | None) -> float:
    return np.nan if row is None or row["tre_mm"] is None else row["tre_mm"]


def _pct(share: float) -> str:
    return "–" if not np.isfinite(share) else f"{100 * share:.0f}%"


def _mm(tre: np.ndarray) -> str:
    return f"{np.nanmean(tre):.2f}" if np.isfinite(tre).any() else "–"


def rows(results: list[dict]) -> list[str]:
    by_case: dict[str, dict[str, dict]] = {}
    for r in results:
        by_case.setdefault(r["case"], {})[r["method"]] = r
    kinds = list(dict.fromkeys(r["kind"] for r in results))
    out = []
    for kind in [*kinds, "all"]:
        cases = [c for c, m in by_case.items() if kind in ("all", m["crossreg-rigid"]["kind"])]
        rigid = np.array([_tre(by_case[c]["crossreg-rigid"]) for c in cases])
        ok = np.isfinite(rigid) & (rigid < RIGID_OK_MM)
        for method, label in METHODS.items():
            mine = [by_case[c].get(method) for c in cases]
            if all(r is None for r in mine):  # a run without this method
                continue
            tre = np.array([_tre(r) for r in mine])
            done = np.isfinite(tre) & np.isfinite(rigid)
            removed = [1 - tre[m].mean() / rigid[m].mean() if m.any() else np.nan for m in (done, done & ok)]
            folded = [r["folded"] for r in mine if r is not None and r["folded"] is not None]
            seconds = np.nanmedian(
                [np.nan if r is None or r["seconds"] is None else r["seconds"] for r in mine]
            )
            share = "– | –" if method == "crossreg-rigid" else " | ".join(_pct(v) for v in removed)
            fold = f"{100 * np.mean(folded):.3f}%" if folded else "–"
            failed = int((~np.isfinite(tre)).sum())
            out.append(
                f"| {kind} | {len(cases)} | {label} | {_mm(tre)} | {share} | {fold} | "
                f"{seconds:.0f} | {failed} |"
            )
    return out


def main(path: str) -> None:
    header = (
        "| kind | cases | method | mean TRE (mm) | removed, all | removed, rigid ok | folded | s | failed |"
    )
    print(header)
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows(json.loads(Path(path).read_text())["results"])))


if __name__ == "__main__":
    main(sys.argv[1])
