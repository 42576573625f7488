"""Result of a registration: the transform, the evidence for it, and how to write it all out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossreg.image import Image
from crossreg.transform import AffineTransform


@dataclass(frozen=True, eq=False)
class Result:
    """A registration of ``moving`` onto ``fixed``.

    transform: fixed -> moving (what ``SimpleITK.Resample(moving, fixed, T)`` takes), refined if asked.
    ransac_transform: the transform the sparse matches gave, before refinement.
    fixed_points_mm, moving_points_mm: ``(M, d)`` matched keypoints, world mm LPS.
    inliers: ``(M,)`` bool, matches consistent with ``ransac_transform``.
    confidence: in [0, 1]; the probability that the inlier set is not chance, times the probability that
        the inliers pin the transform down over the overlap better than one match (estimate.py).
    """

    transform: AffineTransform
    ransac_transform: AffineTransform
    fixed_points_mm: np.ndarray
    moving_points_mm: np.ndarray
    inliers: np.ndarray
    confidence: float
    rmse_mm: float
    fixed: Image
    moving: Image
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def n_inliers(self) -> int:
        return int(self.inliers.sum())

    @property
    def n_matches(self) -> int:
        return len(self.inliers)

    def resampled(self) -> Image:
        """The moving image resampled onto the fixed grid through ``transform``."""
        from crossreg.resample import resample

        return resample(self.moving, self.fixed.grid, self.transform)

    def summary(self) -> str:
        """One line a user acts on."""
        t = self.transform
        return (
            f"{self.n_inliers}/{self.n_matches} inlier matches, confidence {self.confidence:.2f}, "
            f"rotation {t.rotation_deg():.1f} deg, translation {np.linalg.norm(t.translation_mm):.1f} mm, "
            f"{sum(self.timings_s.values()):.1f} s"
        )

    def save(
        self,
        transform_path: str | Path,
        resampled_path: str | Path | None = None,
        qa_path: str | Path | None = None,
        matches_path: str | Path | None = None,
    ) -> list[Path]:
        """Write the transform (ITK .tfm) and, if paths are given, the resampled image, QA figure and
        matches (CSV plus Slicer ``*_fixed.mrk.json`` / ``*_moving.mrk.json`` beside it). Each file is
        written atomically, and if one fails (or the run is interrupted) the files this call already
        wrote are removed again, so a set of outputs is never left half-written. Returns the paths."""
        written: list[Path] = []
        try:
            self._save_all(written, transform_path, resampled_path, qa_path, matches_path)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return written

    def _save_all(
        self,
        written: list[Path],
        transform_path: str | Path,
        resampled_path: str | Path | None,
        qa_path: str | Path | None,
        matches_path: str | Path | None,
    ) -> None:
        """Write each output, appending its path to ``written`` as soon as it exists."""
        from crossreg import markups
        from crossreg.imageio import save
        from crossreg.viz import save_qa

        self.transform.save(transform_path)
        written.append(Path(transform_path))
        if resampled_path is not None:
            save(self.resampled(), resampled_path)
            written.append(Path(resampled_path))
        if qa_path is not None:
            matched = (self.fixed_points_mm, self.moving_points_mm, self.inliers)
            save_qa(qa_path, self.fixed, self.moving, self.transform, matched, title=self.summary())
            written.append(Path(qa_path))
        if matches_path is not None:
            self._save_matches(Path(matches_path), markups, written)

    def _save_matches(self, path: Path, markups, written: list[Path]) -> None:
        markups.write_matches_csv(path, self.fixed_points_mm, self.moving_points_mm, self.inliers)
        written.append(path)
        keep = self.inliers
        labels = [f"M{i}" for i in np.flatnonzero(keep)]
        sides = (("fixed", self.fixed_points_mm), ("moving", self.moving_points_mm))
        for mrk, (side, pts) in zip(self.companion_paths(path), sides, strict=True):
            markups.write_markups_json(mrk, pts[keep], labels, name=f"crossreg {side} inliers")
            written.append(mrk)

    @staticmethod
    def companion_paths(matches_path: str | Path) -> list[Path]:
        """Files ``save`` writes beside a matches CSV (checked for existence before running)."""
        path = Path(matches_path)
        stem = path.name[: -len(path.suffix)] if path.suffix else path.name
        return [path.with_name(f"{stem}_{side}.mrk.json") for side in ("fixed", "moving")]
