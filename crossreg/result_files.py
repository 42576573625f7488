"""The files a registration writes: ITK transform, resampled image, QA figure, matches with Slicer
markups. All of them or none: each file is written atomically (crossreg.outputs), and when one fails
(or the run is interrupted) the files already written are removed again.

ITK has no homography transform file. A homography is written as JSON (``T.json``: the 3 x 3 matrix,
fixed to moving, mm, LPS) and, beside it, as a displacement field on the fixed image's grid
(``T_field.nii.gz``), which SimpleITK, ANTs and 3D Slicer apply as a transform. A deformable result is
written as an ITK composite ``T.h5`` (linear, then the field it follows) and its total displacement
field ``T_field.nii.gz`` (:mod:`crossreg.deformation`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from crossreg import markups
from crossreg.deformation import field_to_sitk
from crossreg.errors import OutputWriteError
from crossreg.imageio import save
from crossreg.outputs import atomic_write, atomic_write_text
from crossreg.qa_figure import save_qa
from crossreg.result import Result
from crossreg.transform import AffineTransform, Model, displacement_field

#: Transform file suffixes ``crossreg register --out`` takes, per kind of model.
TRANSFORM_SUFFIXES = {"linear": (".tfm", ".txt"), "homography": (".json",), "deformable": (".h5",)}
_HINTS = {
    "linear": "a linear transform is written as an ITK text transform (.tfm or .txt)",
    "homography": "ITK has no homography transform file: ask for T.json, and crossreg writes T.json (the "
    "3 x 3 matrix) and T_field.nii.gz (a displacement field SimpleITK, ANTs and 3D Slicer apply)",
    "deformable": "a deformable transform is written as an ITK composite transform: ask for T.h5, and "
    "crossreg writes T.h5 (linear + displacement field) and T_field.nii.gz (the total displacement field)",
}


def write_result(
    result: Result,
    transform_path: str | Path,
    resampled_path: str | Path | None = None,
    qa_path: str | Path | None = None,
    matches_path: str | Path | None = None,
) -> list[Path]:
    """Write the transform (ITK .tfm; a homography: JSON plus displacement field, :func:`transform_files`)
    and, if paths are given, the resampled image, QA figure and matches (CSV plus Slicer
    ``*_fixed.mrk.json`` / ``*_moving.mrk.json`` beside it); the paths."""
    check_transform_path(transform_path, result.transform.model, result.deformable is not None)
    written: list[Path] = []
    try:
        _write_all(result, written, transform_path, resampled_path, qa_path, matches_path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def check_transform_path(path: str | Path, model: Model, deformable: bool = False) -> None:
    """Raise OutputWriteError unless ``path`` names a file the transform of ``model`` (followed by a
    deformable field if ``deformable``) is written as."""
    kind = _kind(model, deformable)
    if not Path(path).name.lower().endswith(TRANSFORM_SUFFIXES[kind]):
        hint = _HINTS[kind]
        raise OutputWriteError(
            f"cannot write the {'deformable' if deformable else model} transform to {path}: {hint}"
        )


def _kind(model: Model, deformable: bool) -> str:
    return "deformable" if deformable else ("homography" if model == "homography" else "linear")


def transform_files(path: str | Path, model: Model, deformable: bool = False) -> list[Path]:
    """The files a transform of ``model`` (then a field, if ``deformable``) is written to: ``path``,
    and for a homography or a deformable transform the displacement field beside it
    (``T.json`` / ``T.h5`` -> ``T_field.nii.gz``)."""
    path = Path(path)
    if _kind(model, deformable) == "linear":
        return [path]
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return [path, path.with_name(f"{stem}_field.nii.gz")]


def _write_transform(result: Result, path: Path, written: list[Path]) -> None:
    """Write the transform (:func:`transform_files`), appending each path as soon as it exists."""
    if result.deformable is not None:
        h5_path, field_path = transform_files(path, result.transform.model, deformable=True)
        result.deformable.transform.save(h5_path)
        written.append(h5_path)
        result.deformable.transform.save(field_path)
        written.append(field_path)
        return
    t = result.transform
    if isinstance(t, AffineTransform):
        t.save(path)
        written.append(path)
        return
    json_path, field_path = transform_files(path, t.model)
    atomic_write_text(json_path, t.to_json())
    written.append(json_path)
    field = field_to_sitk(displacement_field(t, result.fixed.grid))
    atomic_write(field_path, lambda tmp: sitk.WriteImage(field, str(tmp), useCompression=True))
    written.append(field_path)


def companion_paths(matches_path: str | Path) -> list[Path]:
    """The Slicer markups files written beside a matches CSV (checked for existence before running)."""
    path = Path(matches_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return [path.with_name(f"{stem}_{side}.mrk.json") for side in ("fixed", "moving")]


def _write_all(
    result: Result,
    written: list[Path],
    transform_path: str | Path,
    resampled_path: str | Path | None,
    qa_path: str | Path | None,
    matches_path: str | Path | None,
) -> None:
    """Write each output, appending its path to ``written`` as soon as it exists."""
    _write_transform(result, Path(transform_path), written)
    if resampled_path is not None:
        save(result.resampled(), resampled_path)
        written.append(Path(resampled_path))
    if qa_path is not None:
        save_qa(
            qa_path,
            result.fixed,
            result.moving,
            result.transform,
            result.deformable,
            title=result.summary(),
            confidence=result.confidence,
        )
        written.append(Path(qa_path))
    if matches_path is not None:
        _write_matches(result, Path(matches_path), written)


def _write_matches(result: Result, path: Path, written: list[Path]) -> None:
    markups.write_matches_csv(
        path, result.fixed_points_mm, result.moving_points_mm, result.inliers, result.match_confidence
    )
    written.append(path)
    keep = result.inliers
    labels = [f"M{i}" for i in np.flatnonzero(keep)]
    sides = (("fixed", result.fixed_points_mm), ("moving", result.moving_points_mm))
    for mrk, (side, points) in zip(companion_paths(path), sides, strict=True):
        markups.write_markups_json(mrk, points[keep], labels, name=f"crossreg {side} inliers")
        written.append(mrk)
