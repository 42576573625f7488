"""The files a registration writes: ITK transform, resampled image, QA figure, matches with Slicer
markups. All of them or none: each file is written atomically (crossreg.outputs), and when one fails
(or the run is interrupted) the files already written are removed again."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crossreg import markups
from crossreg.imageio import save
from crossreg.result import Result
from crossreg.viz import save_qa


def write_result(
    result: Result,
    transform_path: str | Path,
    resampled_path: str | Path | None = None,
    qa_path: str | Path | None = None,
    matches_path: str | Path | None = None,
) -> list[Path]:
    """Write the transform (ITK .tfm) and, if paths are given, the resampled image, QA figure and
    matches (CSV plus Slicer ``*_fixed.mrk.json`` / ``*_moving.mrk.json`` beside it); the paths."""
    written: list[Path] = []
    try:
        _write_all(result, written, transform_path, resampled_path, qa_path, matches_path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


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
    result.transform.save(transform_path)
    written.append(Path(transform_path))
    if resampled_path is not None:
        save(result.resampled(), resampled_path)
        written.append(Path(resampled_path))
    if qa_path is not None:
        matched = (result.fixed_points_mm, result.moving_points_mm, result.inliers)
        save_qa(qa_path, result.fixed, result.moving, result.transform, matched, title=result.summary())
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
