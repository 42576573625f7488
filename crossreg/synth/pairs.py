"""A synthetic case on disk: the image pair, the true transform and the landmarks, in standard formats.

Files written to the output folder (world coordinates in mm, LPS, as everywhere in crossreg):

- ``fixed.nii.gz``, ``moving.nii.gz``: the images (the moving image is zero outside its field of view);
- ``true_transform.tfm``: ITK text transform mapping fixed points to moving points (crossreg's
  convention: ``SimpleITK.Resample(moving, fixed, T)`` brings the moving image onto the fixed one);
- ``landmarks.csv``: corresponding points, the match CSV layout of :mod:`crossreg.markups`
  (``id, fixed_x, fixed_y[, fixed_z], moving_x, moving_y[, moving_z], inlier, confidence``;
  every row an inlier, confidence empty);
- ``landmarks_fixed.mrk.json``, ``landmarks_moving.mrk.json``: the same points as 3D Slicer markups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crossreg.imageio import save
from crossreg.markups import write_markups_json, write_matches_csv
from crossreg.outputs import check_outputs
from crossreg.synth.cases import Case

PAIR_FILES = (
    "fixed.nii.gz",
    "moving.nii.gz",
    "true_transform.tfm",
    "landmarks.csv",
    "landmarks_fixed.mrk.json",
    "landmarks_moving.mrk.json",
)


def write_pair(case: Case, out_dir: str | Path, force: bool = False) -> dict[str, Path]:
    """Write ``case`` to ``out_dir`` (created if needed); gives back the written paths by file name.

    Raises OutputExistsError before writing anything if one of the files exists and ``force`` is
    False. Each file is written atomically (no partial file survives an interruption).
    """
    paths = {name: Path(out_dir) / name for name in PAIR_FILES}
    check_outputs(paths.values(), force)
    save(case.fixed, paths["fixed.nii.gz"])
    save(case.moving, paths["moving.nii.gz"])
    case.true_transform.save(paths["true_transform.tfm"])
    n = len(case.landmarks_fixed_mm)
    write_matches_csv(
        paths["landmarks.csv"], case.landmarks_fixed_mm, case.landmarks_moving_mm, np.ones(n, bool)
    )
    labels = [f"L{i + 1}" for i in range(n)]
    write_markups_json(
        paths["landmarks_fixed.mrk.json"], case.landmarks_fixed_mm, labels, f"{case.name} fixed"
    )
    write_markups_json(
        paths["landmarks_moving.mrk.json"], case.landmarks_moving_mm, labels, f"{case.name} moving"
    )
    return paths
