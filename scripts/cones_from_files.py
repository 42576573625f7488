"""MR -> ultrasound benchmark cones registered as built in memory (with the simulator's mask) and as
read back from files (no mask): does a cone from a file land as well?

Usage: python scripts/cones_from_files.py [--seed 0] [--n 10] [--features crosskey] [--refine]
       [--min-agreement -1]

Each cone of ``crossreg.evaluate.cases.synthetic_cases(["us"], n, seed)`` is registered twice by one
warm Registrator (``--features``, no intensity refinement unless ``--refine``, agreement gate at
``--min-agreement``, by default off so that every answer's TRE shows): as it is, and after a round trip
through NIfTI files in a temporary folder, which stores no mask. Per cone it prints the mean TRE and
the agreement of both answers, then how many of each landed (TRE <= 3 mm).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from crossreg import RegisterConfig, Registrator
from crossreg.errors import NoOverlapError, RegistrationFailed
from crossreg.evaluate.cases import BenchCase, synthetic_cases
from crossreg.evaluate.scoring import SUCCESS_MM
from crossreg.image import Image
from crossreg.imageio import load, save


def answer(registrator: Registrator, case: BenchCase, moving: Image) -> tuple[float | None, str]:
    """The mean TRE of the registration of ``moving`` to the case's fixed image (None if refused), and
    a line describing it."""
    try:
        result = registrator.register(case.fixed, moving)
    except (RegistrationFailed, NoOverlapError):
        return None, "refused"
    tre = float(case.landmark_errors_mm(result.transform).mean())
    return tre, f"{tre:6.2f} mm, agreement {result.agreement:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--features", default="crosskey")
    parser.add_argument("--refine", action="store_true", help="keep the intensity refinement")
    parser.add_argument("--min-agreement", type=float, default=-1.0)
    args = parser.parse_args()
    config = RegisterConfig(features=args.features, min_agreement=args.min_agreement)
    registrator = Registrator(config if args.refine else replace(config, refine=None))
    landed = {"memory": 0, "files": 0}
    with tempfile.TemporaryDirectory(prefix="crossreg-cones-") as tmp:
        for case in synthetic_cases(["us"], args.n, seed=args.seed):
            save(case.moving, Path(tmp) / "moving.nii.gz")
            lines = []
            for way, moving in (("memory", case.moving), ("files", load(Path(tmp) / "moving.nii.gz"))):
                tre, line = answer(registrator, case, moving)
                landed[way] += tre is not None and tre <= SUCCESS_MM
                lines.append(f"{way}: {line}")
            print(f"{case.name}  " + " | ".join(lines), flush=True)
    memory, files = landed["memory"], landed["files"]
    print(f"landed (TRE <= {SUCCESS_MM:g} mm) of {args.n}: in memory {memory}, from files {files}")


if __name__ == "__main__":
    main()
