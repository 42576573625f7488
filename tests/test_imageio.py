import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from crossreg.datasets import mni152_path
from crossreg.errors import ImageReadError, InvalidImageError, OutputWriteError
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
