"""The deformable stage on one development case, with settings from the command line: the rigid and
deformable TRE, folding and seconds per phase (how docs/deformable.md's settings were chosen).

    python scripts/deformable_dev.py 100 ct-shift structure_floor=1 capture_mm=6
    python scripts/deformable_dev.py 101 us-shift rigid=crosskey point_weight=0

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


def main(seed: int, kind: str, settings: list[str]) -> None:
    pairs = dict(s.split("=") for s in settings)
    case, rigid = cached_case(seed, kind, pairs.pop("rigid", "mind"))
    before = score(case, "rigid", rigid)
    if rigid.transform is None:
        print(f"{kind}: the rigid start failed ({rigid.failed})")
        return
    for name in PHASES:
        setattr(stage, name, timed(name, getattr(stage, name)))
    defaults = DeformableConfig()
    kwargs = {k: type(getattr(defaults, k))(v) for k, v in pairs.items()}
    config = DeformableConfig(**kwargs)
    result = stage.deform(case.fixed, case.moving, rigid.transform, config, matches=rigid.matches)
    after = score(case, "deformable", MethodOutput(result.transform, result.seconds))
    print(
        f"{kind} {kwargs} rigid {before.tre_mm:.2f} -> deformable {after.tre_mm:.2f} mm, "
        f"folded {after.folded}, {result.seconds:.1f} s, max {result.max_displacement_mm:.1f} mm"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
