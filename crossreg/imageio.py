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
#: File names :func:`save` writes, per image dimension (8-bit PNG/JPEG only hold 2D slices).
SAVE_SUFFIXES = {
    3: (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff"),
    2: (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff", ".png", ".jpg", ".jpeg"),
}


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
            reason = "corrupt or truncated image file; re-export or re-copy it"
        raise ImageReadError(f"{path}: {reason}") from None
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_payload(path, itk)
    return itk


def _check_nifti_payload(path: Path, itk: sitk.Image) -> None:
    """Raise if a NIfTI file's header or payload would be read as a silently wrong image.

    ITK's NIfTI reader zero-fills a truncated file, turns NaN voxels into 0, reads a file whose magic
    is damaged as Analyze 7.5 (another orientation), replaces a zero or NaN voxel size by 1 mm and
    rotates a sheared orientation into an orthonormal one, each without an error: so the raw header
    and payload are checked here.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error):
        raise ImageReadError(f"{path}: corrupt or truncated image file; re-export or re-copy it") from None
    header = _nifti_header(path, raw)
    d = min(itk.GetDimension(), 3)
    voxel_mm = header["pixdim"][1 : d + 1]
    if not np.all(np.isfinite(voxel_mm)) or np.any(voxel_mm <= 0):
        raise InvalidImageError(
            f"{path}: voxel size {tuple(float(v) for v in voxel_mm)} mm in the header is not physical; "
            "fix pixdim in the header or re-export the file"
        )
    if header["sform_code"] > 0:
        axes = header["srow"][:d, :d]
        cosines = axes / np.maximum(np.linalg.norm(axes, axis=0), 1e-12)
        if not np.allclose(cosines.T @ cosines, np.eye(d), atol=1e-3):
            raise InvalidImageError(
                f"{path}: sheared orientation (sform axes not orthogonal); resample it onto an "
                "unsheared grid before registering"
            )
    n_values = int(np.prod(itk.GetSize())) * itk.GetNumberOfComponentsPerPixel()
    expected = header["offset"] + n_values * itk.GetSizeOfPixelComponent()
    if len(raw) < expected:
        raise ImageReadError(
            f"{path}: truncated file ({len(raw)} of {expected} bytes); re-export or re-copy it"
        )
    float_types = {16: "f4", 64: "f8"}
    if header["datatype"] in float_types:
        dtype = header["endian"] + float_types[header["datatype"]]
        values = np.frombuffer(raw, dtype, count=n_values, offset=header["offset"])
        bad = n_values - int(np.count_nonzero(np.isfinite(values)))
        if bad:
            raise InvalidImageError(f"{path}: {bad} NaN/Inf voxels; replace them before registering")


def _nifti_header(path: Path, raw: bytes) -> dict:
    """The NIfTI-1/2 header fields crossreg checks; ImageReadError unless ``raw`` starts with one."""
    sizes = {348: (1, "<"), 348 << 24: (1, ">"), 540: (2, "<"), 540 << 24: (2, ">")}
    version, endian = sizes.get(struct.unpack("<i", raw[:4])[0] if len(raw) >= 4 else 0, (0, "<"))
    if len(raw) < {0: 4, 1: 348, 2: 540}[version]:
        raise ImageReadError(f"{path}: truncated file ({len(raw)} bytes, shorter than a NIfTI header)")
    magic = raw[344:348] if version == 1 else raw[4:8]
    if version == 0 or magic not in (b"n+1\0", b"ni1\0", b"n+2\0"):
        damaged = "header size field" if version == 0 else f"magic bytes {magic!r}"
        raise ImageReadError(
            f"{path}: damaged NIfTI header ({damaged}; ITK would read it as Analyze 7.5, in another "
            "orientation); re-export the file"
        )

    def unpack(fmt: str, at: int, n: int = 1) -> np.ndarray:
        return np.array(struct.unpack_from(f"{endian}{n}{fmt}", raw, at), float)

    if version == 1:
        offset, pixdim = unpack("f", 108)[0], unpack("f", 76, 8)
        datatype, sform_code, srow = unpack("h", 70)[0], unpack("h", 254)[0], unpack("f", 280, 12)
    else:
        offset, pixdim = unpack("q", 168)[0], unpack("d", 104, 8)
        datatype, sform_code, srow = unpack("h", 12)[0], unpack("i", 348)[0], unpack("d", 400, 12)
    if not 0 <= offset < 2**40:  # NaN fails too
        raise ImageReadError(f"{path}: damaged NIfTI header (voxel data offset {offset}); re-export the file")
    return {
        "endian": endian,
        "offset": int(offset),
        "pixdim": pixdim,
        "datatype": int(datatype),
        "sform_code": int(sform_code),
        "srow": srow.reshape(3, 4),
    }


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
