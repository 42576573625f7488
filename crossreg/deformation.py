"""Deformable transforms: a linear transform after a dense displacement field, and their files.

Direction, as every crossreg transform: **fixed-image points to moving-image points**, world mm (LPS),
``p_moving = linear.apply(x + d(x))``. The field ``d`` lives on a grid (the fixed image's working grid,
typically) and is linearly interpolated between voxel centres, zero outside the grid, as ITK's
``DisplacementFieldTransform`` does (it clamps to the edge voxel within half a voxel of the grid).

Files:
- ``.h5``: an ITK composite transform, ``[linear, displacement field]``. ITK applies a composite's
  last-added transform first, so the field acts on fixed points and the linear part then maps them to
  the moving image: exactly ``apply``. SimpleITK (``ReadTransform``), ANTs (``antsApplyTransforms -t``)
  and 3D Slicer load it as the moving image's resampling transform.
- ``.nii.gz`` / ``.nii`` / ``.nrrd`` / ``.mha``: the *total* displacement ``u(x) = apply(x) - x`` on the
  field's grid, one vector image that ``sitk.DisplacementFieldTransform``, ANTs and Slicer apply alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from crossreg.errors import TransformIOError
from crossreg.image import Grid, Image
from crossreg.resample import grid_points_mm
from crossreg.transform import AffineTransform, from_sitk, to_sitk

COMPOSITE_SUFFIXES = (".h5", ".hdf5")
FIELD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True, eq=False)
class DeformableTransform:
    """fixed -> moving: ``p_moving = linear.apply(x + d(x))``, ``d`` a displacement field (mm, LPS).

    linear: the rigid/affine part (a registration's linear result). field: vector Image, array
    ``(*grid.shape, d)`` float, components in world ``(x, y, z)`` order, mm; any Grid (direction too).
    """

    linear: AffineTransform
    field: Image

    def __post_init__(self) -> None:
        d = self.field.ndim
        if self.field.array.shape != (*self.field.grid.shape, d) or self.linear.ndim != d:
            raise ValueError(
                f"a {self.linear.ndim}D linear part and a field of shape {self.field.array.shape} on a "
                f"{self.field.grid.shape} grid: the field needs shape (*grid.shape, {d})"
            )

    @property
    def ndim(self) -> int:
        return self.field.ndim

    @staticmethod
    def from_displacement(
        linear: AffineTransform, displacement_mm: torch.Tensor, grid: Grid
    ) -> DeformableTransform:
        """From a channel-first field ``(d, *grid.shape)`` (world x, y, z components, mm)."""
        moved = torch.movedim(displacement_mm.detach().cpu().float(), 0, -1).contiguous().numpy()
        return DeformableTransform(linear, Image(moved, grid))

    def field_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The field channel-first, ``(d, *grid.shape)`` float64 on ``device``."""
        return torch.movedim(torch.as_tensor(self.field.array, dtype=torch.float64, device=device), -1, 0)

    def apply_tensor(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Moving points ``(*P, d)`` for fixed world points ``(*P, d)`` (any float dtype, any device)."""
        d = self.ndim
        grid = self.field.grid
        index = _world_to_index(points_mm, grid)
        size = torch.as_tensor(grid.size_xyz, dtype=index.dtype, device=index.device)
        inside = ((index >= -0.5) & (index < size - 0.5)).all(dim=-1)
        coords = 2.0 * index / (size - 1).clamp(min=1) - 1.0
        flat = coords.reshape(1, -1, *([1] * (d - 1)), d)
        vol = self.field_tensor(points_mm.device).to(points_mm.dtype)[None]
        # Border padding within half a voxel of the grid and zero beyond: ITK's rule.
        disp = F.grid_sample(vol, flat, align_corners=True, padding_mode="border").reshape(d, -1).T
        shifted = points_mm + disp.reshape(points_mm.shape) * inside[..., None]
        m = torch.as_tensor(self.linear.matrix, dtype=points_mm.dtype, device=points_mm.device)
        b = torch.as_tensor(self.linear.translation_mm, dtype=points_mm.dtype, device=points_mm.device)
        return shifted @ m.T + b

    def apply(self, points_mm: np.ndarray) -> np.ndarray:
        """Moving points ``(N, d)`` for fixed world points ``(N, d)``."""
        pts = torch.as_tensor(np.asarray(points_mm, float), dtype=torch.float64)
        return self.apply_tensor(pts).numpy()

    def displacement(self) -> Image:
        """Total displacement ``u(x) = apply(x) - x`` on the field's grid: one field that moves fixed
        points as the whole transform does (what ANTs and Slicer apply alone); array ``(*shape, d)``."""
        points = grid_points_mm(self.field.grid, dtype=torch.float64)
        total = self.apply_tensor(points) - points
        return Image(total.float().numpy(), self.field.grid)

    def save(self, path: str | Path) -> None:
        """Write ``.h5`` (ITK composite: linear + field) or a total displacement field image
        (``.nii.gz``, ``.nrrd``, ...), atomically."""
        import SimpleITK as sitk

        from crossreg.outputs import atomic_write

        name = Path(path).name.lower()
        if name.endswith(COMPOSITE_SUFFIXES):
            atomic_write(path, lambda tmp: sitk.WriteTransform(to_sitk_composite(self), str(tmp)))
        elif name.endswith(FIELD_SUFFIXES):
            image = field_to_sitk(self.displacement())
            atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))
        else:
            raise TransformIOError(
                f"cannot write a deformable transform to {path}: use .h5 (ITK composite transform) or "
                ".nii.gz / .nrrd (total displacement field)"
            )

    @staticmethod
    def read(path: str | Path) -> DeformableTransform:
        """Read a ``.h5`` composite ``[linear, displacement]`` (or a lone field) or a displacement image."""
        import SimpleITK as sitk

        name = Path(path).name.lower()
        try:
            if name.endswith(FIELD_SUFFIXES):
                field = field_from_sitk(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
                return DeformableTransform(AffineTransform.identity(field.ndim), field)
            return from_sitk_composite(sitk.ReadTransform(str(path)), str(path))
        except RuntimeError as err:
            raise TransformIOError(f"cannot read deformable transform {path}: {err}") from None


def warp_image(image: Image, target: Grid, transform: DeformableTransform) -> Image:
    """``image`` (the moving one) sampled on ``target`` (the fixed grid) through ``transform``, linearly;
    its mask marks target voxels that land inside ``image`` (and its mask)."""
    from crossreg.resample import sample_world

    moved = transform.apply_tensor(grid_points_mm(target, dtype=torch.float64))
    stacked = np.stack([np.asarray(image.array, np.float32), image.valid_mask().astype(np.float32)])
    values = sample_world(torch.from_numpy(stacked).double(), image.grid, moved)
    return Image(values[0].float().numpy(), target, values[1].numpy() > 0.999, image.source)


def _world_to_index(points_mm: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Continuous ``index_xyz`` ``(*P, d)`` of world points ``(*P, d)``."""
    inv = torch.as_tensor(np.linalg.inv(grid.index_to_world_matrix()), dtype=points_mm.dtype)
    inv = inv.to(points_mm.device)
    return points_mm @ inv[:-1, :-1].T + inv[:-1, -1]


def field_to_sitk(field: Image):
    """A SimpleITK float64 vector image of a field Image (array ``(*shape, d)``)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(field.array, np.float64), isVector=True)
    image.SetSpacing([float(s) for s in field.spacing_mm])
    image.SetOrigin([float(o) for o in field.origin_mm])
    image.SetDirection(np.asarray(field.direction, float).ravel().tolist())
    return image


def field_from_sitk(image) -> Image:
    """A field Image (array ``(*shape, d)`` float32) of a SimpleITK vector image."""
    import SimpleITK as sitk

    d = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != d:
        raise TransformIOError(
            f"a displacement field needs {d} components, not {image.GetNumberOfComponentsPerPixel()}"
        )
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    grid = Grid(
        tuple(int(n) for n in array.shape[:-1]),
        tuple(float(s) for s in image.GetSpacing()),
        tuple(float(o) for o in image.GetOrigin()),
        np.asarray(image.GetDirection(), float).reshape(d, d),
    )
    return Image(array, grid)


def to_sitk_composite(t: DeformableTransform):
    """A SimpleITK CompositeTransform ``[linear, field]`` equal to ``t`` (the field acts first)."""
    import SimpleITK as sitk

    composite = sitk.CompositeTransform(t.ndim)
    composite.AddTransform(to_sitk(t.linear))
    composite.AddTransform(sitk.DisplacementFieldTransform(field_to_sitk(t.field)))
    return composite


def from_sitk_composite(tx, source: str = "transform") -> DeformableTransform:
    """A DeformableTransform of a SimpleITK transform: a composite ``[linear..., field]`` (ITK order,
    the field applied first) or a lone displacement field transform."""
    import SimpleITK as sitk

    parts = [tx]
    if tx.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(tx)
        parts = [composite.GetNthTransform(i) for i in range(composite.GetNumberOfTransforms())]
    is_field = [p.GetName() == "DisplacementFieldTransform" for p in parts]
    if sum(is_field) != 1 or not is_field[-1]:
        raise TransformIOError(
            f"{source}: expected linear transforms then one displacement field (applied first), got "
            + ", ".join(p.GetName() for p in parts)
        )
    field = field_from_sitk(sitk.DisplacementFieldTransform(parts[-1]).GetDisplacementField())
    linear = AffineTransform.identity(field.ndim)
    if len(parts) > 1:
        linear = from_sitk(sitk.CompositeTransform(parts[:-1]), source)
    return DeformableTransform(linear, field)
