"""Result of a registration: the transform and the evidence for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossreg.deformable.stage import DeformableResult
from crossreg.deformation import DeformableTransform, warp_image
from crossreg.image import Image
from crossreg.transform import AffineTransform, Transform


@dataclass(frozen=True, eq=False)
class Result:
    """A registration of ``moving`` onto ``fixed``."""

    transform: Transform  # fixed -> moving, linear: what SimpleITK.Resample(moving, fixed, T) takes
    ransac_transform: Transform  # what the matches gave, before intensity refinement
    fixed_points_mm: np.ndarray  # (M, d) matched points, world mm LPS
    moving_points_mm: np.ndarray  # (M, d)
    inliers: np.ndarray  # (M,) bool, matches consistent with ransac_transform
    match_confidence: np.ndarray  # (M,) in [0, 1]: 1 - nearest / second-nearest descriptor distance
    confidence: float  # [0, 1]: the inliers are not chance, and pin the transform down (verify.py)
    round_trip: float  # [0, 1]: share of inliers that match back to themselves under the transform
    ambiguity: float  # [0, 1]: a second, different transform's inliers over the best's (verify.py)
    agreement: float  # [-1, 1]: how sharply the images' MIND-SSC agree at the transform (verify.py)
    rmse_mm: float  # inlier residual under ransac_transform
    fixed: Image
    moving: Image
    timings_s: dict[str, float] = field(default_factory=dict)  # seconds per pipeline stage
    # The deformable stage's transform (``transform`` then a field) and its checks; None: not asked for.
    deformable: DeformableResult | None = None

    @property
    def n_inliers(self) -> int:
        return int(self.inliers.sum())

    @property
    def n_matches(self) -> int:
        return len(self.inliers)

    @property
    def final_transform(self) -> Transform | DeformableTransform:
        """The deformable transform if the stage ran, else ``transform``: what the files hold."""
        return self.transform if self.deformable is None else self.deformable.transform

    def resampled(self) -> Image:
        """The moving image resampled onto the fixed grid through :attr:`final_transform`."""
        from crossreg.resample import resample

        if self.deformable is not None:
            return warp_image(self.moving, self.fixed.grid, self.deformable.transform)
        return resample(self.moving, self.fixed.grid, self.transform)

    def summary(self) -> str:
        """One line a user acts on."""
        return (
            f"{self.n_inliers}/{self.n_matches} inlier matches, confidence {self.confidence:.2f}, "
            f"round trip {100 * self.round_trip:.0f}%, ambiguity {self.ambiguity:.2f}, "
            f"agreement {self.agreement:.2f}, {self._motion()}{self._deformation()}, "
            f"{sum(self.timings_s.values()):.1f} s"
        )

    def _deformation(self) -> str:
        """The deformable field's size and folding, if the stage ran."""
        if self.deformable is None:
            return ""
        d = self.deformable
        return (
            f", then a field of up to {d.max_displacement_mm:.1f} mm "
            f"({100 * d.negative_jacobian_fov:.2f}% folded in the fixed FOV)"
        )

    def _motion(self) -> str:
        """Rotation and translation of an affine transform; for a homography, how far it moves the
        fixed image's centre."""
        t = self.transform
        if isinstance(t, AffineTransform):
            shift = np.linalg.norm(t.translation_mm)
            return f"rotation {t.rotation_deg():.1f} deg, translation {shift:.1f} mm"
        centre = self.fixed.grid.center_mm()[None]
        shift = np.linalg.norm(t.apply(centre) - centre)
        return f"homography moving the fixed image centre {shift:.1f} mm"

    def save(
        self,
        transform_path: str | Path,
        resampled_path: str | Path | None = None,
        qa_path: str | Path | None = None,
        matches_path: str | Path | None = None,
    ) -> list[Path]:
        """Write the transform and the outputs whose paths are given, all or none
        (:func:`crossreg.result_files.write_result`). Returns the paths written."""
        from crossreg.result_files import write_result

        return write_result(self, transform_path, resampled_path, qa_path, matches_path)
