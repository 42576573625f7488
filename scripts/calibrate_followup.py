"""How far affine transfer misses lesion centres in synthetic follow-ups (make_longitudinal).

For each pair, the best least-squares affine map from 20000 baseline brain points to their follow-up
places (the best any affine registration can do), then its error at the lesion centres against the
exact tracks: mean, median and 90th percentile over all lesions, mm; and the brain points' RMS.
Configs: ``radial`` (concentric growth, no longitudinal change: the follow-up before eccentric growth),
``shift`` (eccentric growth only), ``change`` (the brain's change only), ``default``.

python scripts/calibrate_followup.py [PAIRS] [FIRST_SEED] [CONFIG ...]
"""

import sys

import numpy as np

from crossreg.datasets import mni152_t1, mni152_tissues
from crossreg.synth.diffeo import SmoothFieldConfig
from crossreg.synth.labels import head_labels
from crossreg.synth.lesions import FollowupConfig, LesionConfig, make_longitudinal
from crossreg.synth.subjects import SubjectConfig

pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
first = int(sys.argv[2]) if len(sys.argv) > 2 else 100
still, concentric = SmoothFieldConfig(max_displacement_mm=(0.0, 0.0)), LesionConfig(shift_mm=(0.0, 0.0))
configs = {
    "radial": FollowupConfig(lesions=concentric, change=still),
    "shift": FollowupConfig(change=still),
    "change": FollowupConfig(lesions=concentric),
    "default": FollowupConfig(),
}
t1 = mni152_t1(2)
labels = head_labels(t1, mni152_tissues(2))


def affine_fit(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The ``(4, 3)`` least-squares affine map (homogeneous rows) taking ``source`` to ``target``."""
    homogeneous = np.c_[source, np.ones(len(source))]
    return np.linalg.lstsq(homogeneous, target, rcond=None)[0]


for name in sys.argv[3:] or configs:
    config = configs[name]
    at_lesions, rms = [], []
    for seed in range(first, first + pairs):
        pair = make_longitudinal(t1, labels, SubjectConfig(contrast="t1"), config, seed)
        tissues = pair.baseline_tissues
        brain = sum(tissues[k].array for k in ("csf", "gm", "wm", "lesion", "rim")) > 0.5
        index = np.argwhere(brain)
        index = index[np.random.default_rng(seed).choice(len(index), 20000, replace=False)]
        points = pair.baseline.grid.index_to_world(index[:, ::-1].astype(float))
        fit = affine_fit(points, pair.baseline_to_followup(points))
        centres = np.array([lesion.centre_mm for lesion in pair.lesions])
        truth = np.array([lesion.followup_centre_mm for lesion in pair.lesions])
        at_lesions += list(np.linalg.norm(np.c_[centres, np.ones(len(centres))] @ fit - truth, axis=1))
        moved = np.c_[points, np.ones(len(points))] @ fit - pair.baseline_to_followup(points)
        rms.append(np.sqrt((moved**2).sum(axis=1).mean()))
    e = np.array(at_lesions)
    print(
        f"{name:8s} lesions {len(e):3d}: mean {e.mean():.2f} median {np.median(e):.2f} "
        f"p90 {np.percentile(e, 90):.2f} mm; brain RMS {np.mean(rms):.2f} mm",
        flush=True,
    )
