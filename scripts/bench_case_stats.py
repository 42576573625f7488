"""Facts about the benchmark cases quoted in docs/benchmarks.md, recomputed from the code and results.

Usage: python scripts/bench_case_stats.py [docs/bench/3d/results.json]
Prints the ultrasound cone's share of the head's signal volume for the 3D `us` cases, and for each
intensity baseline the field-of-view fractions of the T2/random-LUT cases it failed.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np

from crossreg import datasets
from crossreg.evaluate.cases import synthetic_cases
from crossreg.image import fov_mask


def cone_coverage() -> np.ndarray:
    """Cone volume / head signal volume of the 10 benchmark `us` cases (seed 0)."""
    t1 = datasets.mni152_t1(2)
    head_mm3 = fov_mask(t1).sum() * float(np.prod(t1.spacing_mm))
    cases = synthetic_cases(("us",), 10, seed=0)
    return np.array(
        [c.moving.valid_mask().sum() * float(np.prod(c.moving.spacing_mm)) / head_mm3 for c in cases]
    )


def failed_fov(results_path: str) -> dict[str, list[float]]:
    """Per baseline, the slab fractions of the t2/random cases it did not register within 3 mm."""
    out: dict[str, list[float]] = {}
    with open(results_path) as f:
        results = json.load(f)["results"]
    for r in results:
        if r["kind"] in ("t2", "random") and not r["success"] and r["method"] != "identity":
            out.setdefault(r["method"], []).append(float(re.search(r"fov([0-9.]+)", r["case"]).group(1)))
    return out


if __name__ == "__main__":
    coverage = cone_coverage()
    low, high, median = coverage.min(), coverage.max(), np.median(coverage)
    print(f"us cone / head volume: {low:.1%} .. {high:.1%} (median {median:.1%})")
    for method, fovs in failed_fov(
        sys.argv[1] if len(sys.argv) > 1 else "docs/bench/3d/results.json"
    ).items():
        print(f"{method}: failed t2/random cases kept {sorted(fovs)} of the head")
