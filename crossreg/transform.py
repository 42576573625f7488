"""Linear transforms and 2D homographies in world millimetres (LPS), and their files.

The one convention of crossreg: **a registration transform maps fixed-image points to moving-image
points**, ``p_moving = matrix @ p_fixed + translation_mm``. That is the transform
``SimpleITK.Resample(moving, fixed, T)`` takes, what ANTs calls the forward transform of
``antsApplyTransforms -r fixed -i moving -t T``, and what 3D Slicer loads as the resampling transform
("transform from parent") of the moving image. Written files are ITK text transforms
(``AffineTransform_double_D_D``, centre 0), which all three read. A homography, which ITK has no file
for, is written as JSON and as a displacement field (:func:`displacement_field`) that all three apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from crossreg.errors import TransformIOError
from crossreg.image import Grid, Image

Model = Literal["rigid", "similarity", "affine", "homography"]


@dataclass(frozen=True, eq=False)
class AffineTransform:
    """``x -> matrix @ x + translation_mm`` on world points; rigid and similarity are special cases.

    matrix: ``(d, d)``; translation_mm: ``(d,)``; model: the family it was estimated in.
    """

    matrix: np.ndarray
    translation_mm: np.ndarray
    model: Model = "affine"

    @property
    def ndim(self) -> int:
        return self.matrix.shape[0]

    @staticmethod
    def identity(ndim: int) -> AffineTransform:
        return AffineTransform(np.eye(ndim), np.zeros(ndim), "rigid")

    def homogeneous(self) -> np.ndarray:
        """``(d+1, d+1)`` homogeneous matrix."""
        d = self.ndim
        m = np.eye(d + 1)
        m[:d, :d], m[:d, d] = self.matrix, self.translation_mm
        return m

    @staticmethod
    def from_homogeneous(m: np.ndarray, model: Model = "affine") -> AffineTransform:
        d = m.shape[0] - 1
        return AffineTransform(np.array(m[:d, :d], float), np.array(m[:d, d], float), model)

    def apply(self, points_mm: np.ndarray) -> np.ndarray:
        """Transformed points ``(N, d)`` for world points ``(N, d)``."""
        return np.asarray(points_mm, float) @ self.matrix.T + self.translation_mm

    def inverse(self) -> AffineTransform:
        """The transform that undoes this one (moving -> fixed for a registration result)."""
        return AffineTransform.from_homogeneous(np.linalg.inv(self.homogeneous()), self.model)

    def rotation_deg(self) -> float:
        """Angle of the rotation part (polar decomposition), degrees."""
        u, _, vt = np.linalg.svd(self.matrix)
        r = u @ vt
        if self.ndim == 2:
            return float(np.degrees(abs(np.arctan2(r[1, 0], r[0, 0]))))
        return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))

    def save(self, path: str | Path) -> None:
        """Write an ITK text transform file (.tfm/.txt); see :func:`to_itk_text`."""
        from crossreg.outputs import atomic_write_text

        atomic_write_text(path, to_itk_text(self))


@dataclass(frozen=True, eq=False)
class HomographyTransform:
    """A 2D projective transform on world points: ``x -> (H[:2] @ [x, 1]) / (H[2] @ [x, 1])``.

    matrix: ``(3, 3)`` homogeneous matrix ``H`` (scaled so that ``H[2, 2] = 1`` where possible), fixed
    world mm (LPS) to moving world mm for a registration, as every crossreg transform. ITK has no
    homography transform file: :mod:`crossreg.result_files` writes it as JSON and as a displacement field.
    """

    matrix: np.ndarray
    model: ClassVar[Model] = "homography"

    def __post_init__(self) -> None:
        if np.shape(self.matrix) != (3, 3):
            raise ValueError(f"a homography is a (3, 3) matrix, got shape {np.shape(self.matrix)}")

    @property
    def ndim(self) -> int:
        return 2

    def homogeneous(self) -> np.ndarray:
        """``(3, 3)`` homogeneous matrix (``H`` itself): what resampling chains with the grids."""
        return self.matrix

    def apply(self, points_mm: np.ndarray) -> np.ndarray:
        """Transformed points ``(N, 2)`` for world points ``(N, 2)``."""
        mapped = np.asarray(points_mm, float) @ self.matrix[:, :2].T + self.matrix[:, 2]
        return mapped[:, :2] / mapped[:, 2:]

    def inverse(self) -> HomographyTransform:
        """The homography that undoes this one (moving -> fixed for a registration result)."""
        inv = np.linalg.inv(self.matrix)
        return HomographyTransform(inv / inv[2, 2] if abs(inv[2, 2]) > 1e-12 else inv)

    def to_json(self) -> str:
        """The matrix as JSON: model, direction (fixed to moving), units (mm), space (LPS), matrix."""
        content = {
            "model": "homography",
            "direction": "fixed_to_moving",
            "units": "mm",
            "space": "LPS",
            "matrix": self.matrix.tolist(),
        }
        return json.dumps(content, indent=2) + "\n"


#: Any transform crossreg estimates: fixed world mm -> moving world mm.
Transform = AffineTransform | HomographyTransform


def read_homography(path: str | Path) -> HomographyTransform:
    """Read a homography JSON file written by crossreg (:meth:`HomographyTransform.to_json`)."""
    try:
        content = json.loads(Path(path).read_text())
        matrix = np.array(content["matrix"], float)
        if content.get("model") != "homography" or content.get("direction") != "fixed_to_moving":
            raise ValueError("not a crossreg fixed-to-moving homography")
        return HomographyTransform(matrix)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TransformIOError(f"cannot read homography {path}: {err}") from None


def displacement_field(t: HomographyTransform, grid: Grid) -> Image:
    """The displacement ``t(x) - x`` (mm) at every pixel centre ``x`` of ``grid``: an Image of array
    ``(*grid.shape, 2)``, ITK's displacement field convention (the moving point is ``x + d(x)``).

    Written as a vector image (:func:`crossreg.deformation.field_to_sitk`), a
    ``sitk.DisplacementFieldTransform`` of it maps fixed to moving points as ``t`` does, interpolating
    linearly between pixel centres and not moving points outside ``grid``.
    """
    ny, nx = grid.shape
    index_xyz = np.stack(np.meshgrid(np.arange(nx), np.arange(ny)), axis=-1).reshape(-1, 2)
    points = grid.index_to_world(index_xyz)
    return Image((t.apply(points) - points).reshape(ny, nx, 2), grid)


def compose(*transforms: AffineTransform) -> AffineTransform:
    """The transform applying ``transforms`` in the order given: ``compose(a, b)(x) = b(a(x))``."""
    m = np.eye(transforms[0].ndim + 1)
    for t in transforms:
        m = t.homogeneous() @ m
    models = {t.model for t in transforms}
    model: Model = "affine" if "affine" in models else ("similarity" if "similarity" in models else "rigid")
    return AffineTransform.from_homogeneous(m, model)


def rigid_from_params(
    angles_deg: np.ndarray, translation_mm: np.ndarray, center_mm: np.ndarray
) -> AffineTransform:
    """Rigid transform rotating by Euler angles (deg; 1 in 2D, x-y-z in 3D) about ``center_mm``."""
    a = np.radians(np.atleast_1d(np.asarray(angles_deg, float)))
    c = np.asarray(center_mm, float)
    if c.size == 2:
        r = np.array([[np.cos(a[0]), -np.sin(a[0])], [np.sin(a[0]), np.cos(a[0])]])
    else:
        cx, cy, cz = np.cos(a)
        sx, sy, sz = np.sin(a)
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        r = rz @ ry @ rx
    return AffineTransform(r, c - r @ c + np.asarray(translation_mm, float), "rigid")


def to_itk_text(t: AffineTransform) -> str:
    """ITK Insight Transform File text for ``t`` (centre 0, so parameters are matrix and offset)."""
    d = t.ndim
    params = " ".join(f"{v:.17g}" for v in [*t.matrix.ravel(), *t.translation_mm])
    return (
        "#Insight Transform File V1.0\n"
        "#Transform 0\n"
        f"Transform: AffineTransform_double_{d}_{d}\n"
        f"Parameters: {params}\n"
        f"FixedParameters: {' '.join(['0'] * d)}\n"
    )


def read_transform(path: str | Path) -> AffineTransform:
    """Read a linear ITK transform file (.tfm/.txt/.mat/.h5) written by crossreg, ITK, ANTs or Slicer."""
    import SimpleITK as sitk

    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as err:
        raise TransformIOError(f"cannot read transform {path}: {_first_line(err)}") from None
    return from_sitk(tx, source=str(path))


def from_sitk(tx, source: str = "transform") -> AffineTransform:
    """Convert any linear SimpleITK transform (Euler, Versor, Similarity, Affine, Translation,
    or a composite of them) to AffineTransform, by probing it at the origin and unit vectors."""
    d = tx.GetDimension()
    probes = np.vstack([np.zeros(d), np.eye(d) * 100.0])
    try:
        mapped = np.array([tx.TransformPoint(p.tolist()) for p in probes])
    except RuntimeError as err:
        raise TransformIOError(f"{source}: cannot evaluate transform ({_first_line(err)})") from None
    result = AffineTransform((mapped[1:] - mapped[0]).T / 100.0, mapped[0], "affine")
    check = np.random.default_rng(0).normal(scale=100.0, size=(4, d))
    if not np.allclose([tx.TransformPoint(p.tolist()) for p in check], result.apply(check), atol=1e-6):
        raise TransformIOError(f"{source}: {tx.GetName()} is not a linear transform")
    return result


def to_sitk(t: AffineTransform):
    """A SimpleITK AffineTransform equal to ``t``."""
    import SimpleITK as sitk

    tx = sitk.AffineTransform(t.ndim)
    tx.SetMatrix(t.matrix.ravel().tolist())
    tx.SetTranslation(t.translation_mm.tolist())
    return tx


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__
