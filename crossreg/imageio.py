"""Reading and writing images through SimpleITK: NIfTI, NRRD, MHA, DICOM series, PNG/TIFF."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from crossreg.errors import ImageReadError, InvalidImageError
from crossreg.image import Grid, Image, validate
from crossreg.outputs import atomic_write

_LUMA = np.array([0.299, 0.587, 0.114])


def load(path: str | Path) -> Image:
    """Read an image file, or a DICOM series from a directory, with its physical space.

    RGB(A) images (e.g. PNG photographs) are converted to luminance. Raises ImageReadError when the
    path cannot be read and InvalidImageError when what it holds cannot be registered.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or directory")
    itk = _read_dicom_series(path) if path.is_dir() else _read_file(path)
    return from_sitk(itk, source=str(path))


def _read_file(path: Path) -> sitk.Image:
    try:
        itk = sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = "not a readable image (unknown format or corrupt/truncated file)"
        if "ImageIO" not in str(err) and "Could not create IO" not in str(err):
            reason = "corrupt or truncated image file"
        raise ImageReadError(f"{path}: {reason}") from None
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_payload(path, itk)
    return itk


def _check_nifti_payload(path: Path, itk: sitk.Image) -> None:
    """Raise if a NIfTI file holds fewer voxel bytes than its header promises, or NaN/Inf floats.

    ITK's NIfTI reader zero-fills a truncated file and turns NaN voxels into 0 without a word: both
    would be silent wrong images, so the raw payload is checked here.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error):
        raise ImageReadError(f"{path}: corrupt or truncated image file") from None
    sizeof_hdr = struct.unpack("<i", raw[:4])[0]
    nifti2 = sizeof_hdr in (540, 540 << 24)
    endian = "<" if sizeof_hdr in (348, 540) else ">"
    offset = int(
        struct.unpack(endian + ("q" if nifti2 else "f"), raw[168:176] if nifti2 else raw[108:112])[0]
    )
    datatype = struct.unpack(endian + "h", raw[12:14] if nifti2 else raw[70:72])[0]
    n_values = int(np.prod(itk.GetSize())) * itk.GetNumberOfComponentsPerPixel()
    expected = offset + n_values * itk.GetSizeOfPixelComponent()
    if len(raw) < expected:
        raise ImageReadError(
            f"{path}: truncated file ({len(raw)} of {expected} bytes); re-export or re-copy it"
        )
    float_types = {16: "f4", 64: "f8"}
    if datatype in float_types:
        values = np.frombuffer(raw, endian + float_types[datatype], count=n_values, offset=offset)
        bad = n_values - int(np.count_nonzero(np.isfinite(values)))
        if bad:
            raise InvalidImageError(f"{path}: {bad} NaN/Inf voxels; replace them before registering")


def _read_dicom_series(folder: Path) -> sitk.Image:
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise ImageReadError(f"{folder}: directory holds no DICOM series")
    if len(ids) > 1:
        raise ImageReadError(
            f"{folder}: directory holds {len(ids)} DICOM series ({', '.join(ids[:3])}...); "
            "put one series per directory"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    try:
        return reader.Execute()
    except RuntimeError:
        raise ImageReadError(
            f"{folder}: DICOM series could not be read (missing or corrupt slices)"
        ) from None


def from_sitk(itk: sitk.Image, source: str = "") -> Image:
    """An Image from a SimpleITK image (vector pixels become luminance)."""
    arr = sitk.GetArrayFromImage(itk)
    components = itk.GetNumberOfComponentsPerPixel()
    if components not in (1, 3, 4):
        raise InvalidImageError(
            f"{source or 'image'}: {components} values per voxel; crossreg needs a scalar (or RGB) image"
        )
    if components > 1:
        arr = arr[..., :3].astype(np.float64) @ _LUMA if components >= 3 else arr[..., 0]
    d = itk.GetDimension()
    if d not in (2, 3):
        raise InvalidImageError(f"{source or 'image'}: {d}D image; crossreg registers 2D or 3D images")
    grid = Grid(
        shape=tuple(arr.shape),
        spacing_mm=tuple(itk.GetSpacing()),
        origin_mm=tuple(itk.GetOrigin()),
        direction=np.array(itk.GetDirection(), float).reshape(d, d),
    )
    image = Image(np.asarray(arr, np.float32), grid, None, source)
    validate(image)
    return image


def to_sitk(image: Image) -> sitk.Image:
    """A SimpleITK image with the same voxels and physical space."""
    itk = sitk.GetImageFromArray(np.ascontiguousarray(image.array, np.float32))
    itk.SetSpacing([float(s) for s in image.spacing_mm])
    itk.SetOrigin([float(o) for o in image.origin_mm])
    itk.SetDirection(np.asarray(image.direction, float).ravel().tolist())
    return itk


def save(image: Image, path: str | Path) -> None:
    """Write ``image`` atomically; the format follows the extension (.nii.gz, .nrrd, .mha, ...)."""
    itk = to_sitk(image)
    if Path(path).suffix.lower() in {".png", ".jpg", ".jpeg"}:
        scaled = np.clip(image.array, 0, None)
        scaled = 255 * scaled / max(float(scaled.max()), 1e-12)
        itk = sitk.GetImageFromArray(scaled.astype(np.uint8))

    def write(tmp: Path) -> None:
        try:
            sitk.WriteImage(itk, str(tmp), useCompression=True)
        except RuntimeError as err:
            raise OSError(
                f"SimpleITK could not write this format ({str(err).strip().splitlines()[-1]})"
            ) from None

    atomic_write(path, write)
