"""The deformable stage on development cases, with settings from the command line: the rigid and
deformable TRE, folding and seconds per phase, then the mean per kind (how docs/deformable.md's
settings were chosen).

    python scripts/deformable_dev.py 100 ct-shift structure_floor=1 capture_mm=6
    python scripts/deformable_dev.py 101 us-shift rigid=crosskey point_weight=0
    python scripts/deformable_dev.py 100,101,102,103 us-shift,t2-shift,ct-shift equalise=0

``rigid=KIND``: the rigid start's features (default mind). The rigid result's matches go to the
field's point term. The case and the rigid result are cached in /tmp (a case takes ~15 s to make, the
rigid ~20 s). Development seeds only: seeds 0-2 are the held-out benchmark's.
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import crossreg.deformable.stage as stage
from crossreg.deformable import DeformableConfig
from crossreg.evaluate.baselines import MethodOutput
from crossreg.evaluate.cases import synthetic_cases
from crossreg.evaluate.from_rigid import rigid_configs, rigid_start
from crossreg.evaluate.scoring import score

PHASES = ("pair_features", "cost_volume", "coupled_convex", "instance_optimise", "unfold")


def cached_case(seed: int, kind: str, features: str = "mind"):
    """The first ``kind`` case of ``seed`` in 3D and crossreg's rigid result on it."""
    tail = "" if features == "mind" else f"_{features}"
    path = Path(f"/tmp/crossreg_deformable_dev_{seed}_{kind}{tail}.pkl")
    if path.is_file():
        return pickle.loads(path.read_bytes())
    case = synthetic_cases((kind,), 1, seed, 3)[0]
    found = (case, rigid_start(case.fixed, case.moving, seed, rigid_configs((features,))))
    path.write_bytes(pickle.dumps(found))
    return found


def timed(name: str, fn):
    def run(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        print(f"  {name}: {time.perf_counter() - start:.2f} s", flush=True)
        return out

    return run


def run(seed: int, kind: str, features: str, config: DeformableConfig) -> tuple[float, float, float] | None:
    """Rigid and deformable TRE (mm) and the stage's seconds on one case; None if the rigid failed."""
    case, rigid = cached_case(seed, kind, features)
    before = score(case, "rigid", rigid)
    if rigid.transform is None:
        print(f"{seed} {kind}: the rigid start failed ({rigid.failed})")
        return None
    result = stage.deform(case.fixed, case.moving, rigid.transform, config, matches=rigid.matches)
    after = score(case, "deformable", MethodOutput(result.transform, result.seconds))
    print(
        f"{seed} {kind} rigid {before.tre_mm:.2f} -> deformable {after.tre_mm:.2f} mm, "
        f"folded {after.folded}, {result.seconds:.1f} s, max {result.max_displacement_mm:.1f} mm, "
        f"agreement {result.feature_agreement:.2f}, {result.n_points} matches"
    )
    return before.tre_mm, after.tre_mm, result.seconds


def main(seeds: list[int], kinds: list[str], settings: list[str]) -> None:
    pairs = dict(s.split("=") for s in settings)
    features = pairs.pop("rigid", "mind")
    for name in PHASES:
        setattr(stage, name, timed(name, getattr(stage, name)))
    defaults = DeformableConfig()
    kwargs = {k: type(getattr(defaults, k))(v) for k, v in pairs.items()}
    config = DeformableConfig(**kwargs)
    for kind in kinds:
        found = [r for seed in seeds if (r := run(seed, kind, features, config)) is not None]
        if found:
            before, after, seconds = (sum(column) / len(found) for column in zip(*found, strict=True))
            print(
                f"{kind} {kwargs}: {len(found)} cases, rigid {before:.2f} -> deformable {after:.2f} mm "
                f"({100 * (1 - after / before):.0f}% removed), stage {seconds:.1f} s"
            )


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1].split(",")], sys.argv[2].split(","), sys.argv[3:])
