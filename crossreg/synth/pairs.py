"""A synthetic case on disk: the image pair, the true transform and the landmarks, in standard formats.

Files written to the output folder (world coordinates in mm, LPS, as everywhere in crossreg):

- ``fixed.nii.gz``, ``moving.nii.gz``: the images (the moving image is zero outside its field of view);
- ``true_transform.tfm``: ITK text transform mapping fixed points to moving points (crossreg's
  convention: ``SimpleITK.Resample(moving, fixed, T)`` brings the moving image onto the fixed one);
- ``true_transform.h5`` instead, for a case with a tissue shift (:mod:`crossreg.synth.brainshift`:
  brain shift under a craniotomy, swelling, a resection cavity, CT/MR soft-tissue deformation): an
  ITK composite transform, the rigid motion after a displacement field over the fixed image
  (:class:`crossreg.deformation.DeformableTransform`), same direction, read by SimpleITK
  (``ReadTransform``), ANTs and 3D Slicer;
- ``landmarks.csv``: corresponding points, the match CSV layout of :mod:`crossreg.markups`
  (``id, fixed_x, fixed_y[, fixed_z], moving_x, moving_y[, moving_z], inlier, confidence``;
  every row an inlier, confidence empty); with a shift, where the tissue moved, none in a cavity;
- ``landmarks_fixed.mrk.json``, ``landmarks_moving.mrk.json``: the same points as 3D Slicer markups.

:func:`write_subject_pair` writes the same folder for a synthetic subject of the template
(:mod:`crossreg.synth.subjects`) without ``true_transform.tfm``: the deformation is nonlinear, and
the landmarks, mapped exactly, carry the truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crossreg.deformation import DeformableTransform
from crossreg.image import Image
from crossreg.imageio import save
from crossreg.markups import write_markups_json, write_matches_csv
from crossreg.outputs import check_outputs
from crossreg.synth.cases import Case
from crossreg.synth.subjects import Subject

SUBJECT_PAIR_FILES = (
    "fixed.nii.gz",
    "moving.nii.gz",
    "landmarks.csv",
    "landmarks_fixed.mrk.json",
    "landmarks_moving.mrk.json",
)
PAIR_FILES = (*SUBJECT_PAIR_FILES[:2], "true_transform.tfm", *SUBJECT_PAIR_FILES[2:])
SHIFT_PAIR_FILES = (*SUBJECT_PAIR_FILES[:2], "true_transform.h5", *SUBJECT_PAIR_FILES[2:])


def write_pair(case: Case, out_dir: str | Path, force: bool = False) -> dict[str, Path]:
    """Write ``case`` to ``out_dir`` (created if needed); gives back the written paths by file name
    (:data:`SHIFT_PAIR_FILES`, with ``true_transform.h5``, for a case with a shift).

    Raises OutputExistsError before writing anything if one of the files exists and ``force`` is
    False. Each file is written atomically (no partial file survives an interruption).
    """
    deformable = isinstance(case.true_transform, DeformableTransform)
    names = SHIFT_PAIR_FILES if deformable else PAIR_FILES
    paths = {name: Path(out_dir) / name for name in names}
    check_outputs(paths.values(), force)
    case.true_transform.save(paths[names[2]])
    _write_images_and_landmarks(
        paths, case.fixed, case.moving, case.landmarks_fixed_mm, case.landmarks_moving_mm, case.name
    )
    return paths


def write_subject_pair(
    template: Image, subject: Subject, landmarks_mm: np.ndarray, out_dir: str | Path, force: bool = False
) -> dict[str, Path]:
    """Write the template (fixed), a synthetic subject (moving) and template landmarks ``(N, 3)`` with
    their exact places in the subject: a case folder for ``crossreg bench --data``. No transform file:
    the truth is nonlinear, the landmarks carry it. Gives back the written paths by file name."""
    paths = {name: Path(out_dir) / name for name in SUBJECT_PAIR_FILES}
    check_outputs(paths.values(), force)
    name = f"subject-{subject.family}-seed{subject.seed}"
    moving_mm = np.asarray(subject.to_subject(landmarks_mm), float)
    _write_images_and_landmarks(paths, template, subject.image, landmarks_mm, moving_mm, name)
    return paths


def _write_images_and_landmarks(
    paths: dict[str, Path],
    fixed: Image,
    moving: Image,
    fixed_mm: np.ndarray,
    moving_mm: np.ndarray,
    name: str,
) -> None:
    save(fixed, paths["fixed.nii.gz"])
    save(moving, paths["moving.nii.gz"])
    write_matches_csv(paths["landmarks.csv"], fixed_mm, moving_mm, np.ones(len(fixed_mm), bool))
    labels = [f"L{i + 1}" for i in range(len(fixed_mm))]
    write_markups_json(paths["landmarks_fixed.mrk.json"], fixed_mm, labels, f"{name} fixed")
    write_markups_json(paths["landmarks_moving.mrk.json"], moving_mm, labels, f"{name} moving")
