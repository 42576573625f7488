import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from crossreg.datasets import mni152_path, mni152_slice
from crossreg.errors import ImageReadError, InvalidImageError, OutputWriteError
from crossreg.image import from_array
from crossreg.imageio import load, save, to_sitk


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_physical_space(t1_2mm, tmp_path, ext):
    path = tmp_path / f"t1{ext}"
    save(t1_2mm, path)
    back = load(path)
    np.testing.assert_array_equal(back.array, t1_2mm.array)
    np.testing.assert_allclose(back.spacing_mm, t1_2mm.spacing_mm)
    np.testing.assert_allclose(back.origin_mm, t1_2mm.origin_mm, atol=1e-5)
    np.testing.assert_allclose(back.direction, t1_2mm.direction, atol=1e-6)
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def write_dicom_series(image, folder, series_uid: str, slices=None) -> None:
    """Write ``image`` as one DICOM file per slice (int16), the way scanners store series."""
    folder.mkdir(parents=True, exist_ok=True)
    itk = sitk.Cast(to_sitk(image), sitk.sitkInt16)
    direction = itk.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in slices or range(itk.GetDepth()):
        sl = itk[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0020|000e": series_uid,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|0013": str(k),
            "0020|0032": "\\".join(map(str, itk.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0020|0037": "\\".join(map(str, direction[0:7:3] + direction[1:8:3])),
            "0018|0050": str(itk.GetSpacing()[2]),
            "0028|0030": f"{itk.GetSpacing()[1]}\\{itk.GetSpacing()[0]}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_directory(t1_2mm, tmp_path):
    write_dicom_series(t1_2mm, tmp_path / "dcm", "1.2.826.0.1.3680043.2.1125.2")
    back = load(tmp_path / "dcm")
    assert back.grid.shape == t1_2mm.grid.shape
    np.testing.assert_allclose(back.origin_mm, t1_2mm.origin_mm, atol=1e-3)
    np.testing.assert_allclose(back.direction, t1_2mm.direction, atol=1e-6)
    np.testing.assert_allclose(back.array, np.round(t1_2mm.array), atol=1)


def test_dicom_directory_with_two_series_is_refused(t1_2mm, tmp_path):
    write_dicom_series(t1_2mm, tmp_path / "dcm", "1.2.826.0.1.3680043.2.1125.2", slices=range(0, 10))
    write_dicom_series(t1_2mm, tmp_path / "dcm2", "1.2.826.0.1.3680043.2.1125.3", slices=range(10, 20))
    for f in (tmp_path / "dcm2").iterdir():
        f.rename(tmp_path / "dcm" / f"b_{f.name}")
    with pytest.raises(ImageReadError, match="2 DICOM series"):
        load(tmp_path / "dcm")


def test_png_rgb_becomes_2d_luminance(tmp_path):
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[..., 0] = np.arange(50)[None, :] * 5
    rgb[..., 1] = np.arange(40)[:, None] * 6
    path = tmp_path / "x.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    img = load(path)
    assert img.ndim == 2 and img.array.shape == (40, 50)
    np.testing.assert_allclose(img.array, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-4)


@pytest.mark.parametrize("ext", [".tif", ".tiff"])
def test_tiff_slice_loads_as_2d_with_its_values_and_spacing(tmp_path, ext):
    """A grayscale TIFF, float32 (as crossreg writes it) or 16-bit (as scanners export), is a 2D image with
    the same values and anisotropic pixel spacing in x, y order; TIFF stores no origin or direction."""
    axial = mni152_slice(1, "axial", 88)  # 189 x 153 pixels, 0-239, stored with direction diag(-1, -1)
    path = tmp_path / f"axial{ext}"
    save(from_array(axial.array, (0.5, 0.8), axial.origin_mm, axial.direction), path)
    img = load(path)
    assert img.ndim == 2 and img.array.shape == (189, 153)
    np.testing.assert_array_equal(img.array, axial.array)
    np.testing.assert_allclose(img.spacing_mm, (0.5, 0.8), rtol=1e-6)  # float32 resolution tags
    # The pixel frame is all a TIFF holds: a pair of TIFFs registers in it, whatever the source had.
    np.testing.assert_array_equal(img.origin_mm, (0.0, 0.0))
    np.testing.assert_array_equal(img.direction, np.eye(2))

    counts = np.round(axial.array * 100).astype(np.uint16)  # up to 23900: needs the 16 bits
    path16 = tmp_path / f"axial16{ext}"
    sitk.WriteImage(sitk.GetImageFromArray(counts), str(path16))
    assert sitk.ReadImage(str(path16)).GetPixelID() == sitk.sitkUInt16
    img16 = load(path16)
    assert img16.ndim == 2 and img16.array.dtype == np.float32 and img16.array.max() == 23900.0
    np.testing.assert_array_equal(img16.array, counts)


@pytest.mark.parametrize(
    "dtype, channels, ext", [(np.uint8, 3, ".tif"), (np.uint16, 3, ".tiff"), (np.uint8, 4, ".tif")]
)
def test_rgb_tiff_becomes_2d_luminance(tmp_path, dtype, channels, ext):
    """RGB(A) TIFF pixels become 0.299 R + 0.587 G + 0.114 B (Rec. 601 luma); alpha is ignored."""
    axial = mni152_slice(1, "axial", 88).array
    scale = 257 if dtype == np.uint16 else 1  # 16-bit: the full 0-65535 range
    planes = [axial, axial[::-1], axial[:, ::-1], np.full_like(axial, 255)][:channels]
    rgb = (np.round(np.stack(planes, axis=-1)) * scale).astype(dtype)
    rgb[0, 0, :3] = np.array([200, 100, 50]) * scale  # luminance 59.8 + 58.7 + 5.7 = 124.2
    path = tmp_path / f"rgb{ext}"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    img = load(path)
    assert img.ndim == 2 and img.array.shape == (189, 153)
    assert img.array[0, 0] == pytest.approx(124.2 * scale, rel=1e-6)
    expected = rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(img.array, expected, rtol=1e-6, atol=1e-4)
    # The channels differ, so the channel mean or BGR order would be far off.
    assert np.abs(img.array - rgb[..., :3].mean(axis=-1)).max() > 20 * scale
    assert np.abs(img.array - rgb[..., 2::-1] @ np.array([0.299, 0.587, 0.114])).max() > 20 * scale


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: None, ImageReadError, "no such file"),
        (lambda p: p.write_text("not an image"), ImageReadError, "not a readable image"),
        (lambda p: p.write_bytes(b""), ImageReadError, "bad.nii.gz"),
    ],
)
def test_unreadable_inputs(tmp_path, make, error, message):
    path = tmp_path / "bad.nii.gz"
    make(path)
    with pytest.raises(error, match=message):
        load(path)


def test_truncated_nifti(t1_2mm, tmp_path):
    good = tmp_path / "good.nii.gz"
    save(t1_2mm, good)
    raw = gzip.decompress(good.read_bytes())
    bad = tmp_path / "bad.nii"
    bad.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ImageReadError, match="truncated"):
        load(bad)
    bad_gz = tmp_path / "bad.nii.gz"
    bad_gz.write_bytes(good.read_bytes()[:-2000])
    with pytest.raises(ImageReadError, match="truncated"):
        load(bad_gz)


def test_4d_image_refused(tmp_path):
    path = tmp_path / "4d.nii.gz"
    vol = sitk.GetImageFromArray(np.random.default_rng(0).random((12, 12, 12)).astype(np.float32))
    sitk.WriteImage(sitk.JoinSeries([vol, vol, vol]), str(path))
    with pytest.raises(InvalidImageError, match="4D"):
        load(path)


def test_save_to_unwritable_place(t1_2mm, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputWriteError):
        save(t1_2mm, blocker / "out.nii.gz")


def _damaged_nifti(tmp_path, at: int, value: bytes):
    """The 2 mm T1 uncompressed, with ``value`` written at byte ``at`` of its header."""
    raw = bytearray(gzip.decompress(mni152_path("t1", 2).read_bytes()))
    raw[at : at + len(value)] = value
    path = tmp_path / "damaged.nii"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    "at, value, error, message",
    [
        # ITK reads each of these without an error, as a different image than the file meant:
        (344, b"xyz\0", ImageReadError, "magic bytes"),  # as Analyze 7.5, in another orientation
        (0, struct.pack("<i", 999), ImageReadError, "header size field"),
        (80, struct.pack("<f", 0.0), InvalidImageError, "voxel size"),  # pixdim[1] = 0 read as 1 mm
        (80, struct.pack("<f", float("nan")), InvalidImageError, "voxel size"),
        (284, struct.pack("<f", 1.0), InvalidImageError, "sheared"),  # srow_x[1]: shear rotated away
        (108, struct.pack("<f", float("nan")), ImageReadError, "offset"),  # vox_offset
    ],
)
def test_damaged_nifti_header_is_refused(tmp_path, at, value, error, message):
    with pytest.raises(error, match=message):
        load(_damaged_nifti(tmp_path, at, value))


def test_undamaged_nifti_header_still_loads(tmp_path, t1_2mm):
    same = _damaged_nifti(tmp_path, 344, b"n+1\0")
    np.testing.assert_array_equal(load(same).array, t1_2mm.array)
