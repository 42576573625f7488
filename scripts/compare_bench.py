"""Per-case TRE of two benchmark reports side by side: which (case, method) runs moved, and by how much.

Usage: python scripts/compare_bench.py BEFORE/results.json AFTER/results.json [--tolerance-mm 0.01]

Prints every run present in both reports whose TRE differs by more than the tolerance (or that one
report answered and the other refused), with the share of putative matches within 3 mm of the truth
in each, then a count. Exit code 0 either way: it reports, it does not judge.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def runs(path: Path) -> dict[tuple[str, str], dict]:
    """The report's runs by (case, method)."""
    return {(r["case"], r["method"]): r for r in json.loads(path.read_text())["results"]}


def moved(before: float | None, after: float | None, tolerance_mm: float) -> bool:
    """Whether two TREs (None: refused) differ by more than ``tolerance_mm`` or in being answered."""
    if before is None or after is None:
        return (before is None) != (after is None)
    return math.fabs(before - after) > tolerance_mm


def _mm(value: float | None) -> str:
    return "refused" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance-mm", type=float, default=0.01)
    args = parser.parse_args()
    a, b = runs(args.before), runs(args.after)
    common = sorted(set(a) & set(b))
    print("| case | method | TRE before (mm) | TRE after (mm) | precision before | precision after |")
    print("|---|---|---:|---:|---:|---:|")
    changed = 0
    for key in common:
        ta, tb = a[key]["tre_mm"], b[key]["tre_mm"]
        if moved(ta, tb, args.tolerance_mm):
            changed += 1
            pa, pb = a[key]["precision"], b[key]["precision"]
            print(f"| {key[0]} | {key[1]} | {_mm(ta)} | {_mm(tb)} | {pa or 0:.3f} | {pb or 0:.3f} |")
    print(f"\n{len(common)} runs compared, {changed} moved by more than {args.tolerance_mm:g} mm")


if __name__ == "__main__":
    main()
