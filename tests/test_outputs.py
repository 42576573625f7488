"""Output checks before any work: existing files, unwritable places, unknown formats."""

import pytest

from crossreg.errors import OutputExistsError, OutputWriteError
from crossreg.outputs import atomic_write_text, check_outputs, check_suffix


def test_existing_output_needs_force(tmp_path):
    path = tmp_path / "T.tfm"
    path.write_text("old")
    with pytest.raises(OutputExistsError, match="--force"):
        check_outputs([path], force=False)
    check_outputs([path, None], force=True)


def test_output_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputWriteError, match="not a directory"):
        check_outputs([tmp_path / "file" / "sub" / "T.tfm"], force=False)


def test_unwritable_place_is_found_even_as_root():
    # os.access says "writable" to root everywhere; /sys refuses new files to root as well.
    with pytest.raises(OutputWriteError, match="not writable"):
        check_outputs(["/sys/crossreg/T.tfm"], force=False)


def test_check_leaves_no_probe_file(tmp_path):
    check_outputs([tmp_path / "new" / "T.tfm", tmp_path / "qa.png"], force=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["R.NII.GZ", "R.nrrd", "sub.dir/R.mha"])
def test_known_suffix_passes(tmp_path, name):
    check_suffix(tmp_path / name, (".nii.gz", ".nrrd", ".mha"), "image")
    check_suffix(None, (".nii.gz",), "image")


@pytest.mark.parametrize("name", ["R.xyz", "R.gz", "R"])
def test_unknown_suffix_is_refused(tmp_path, name):
    with pytest.raises(OutputWriteError, match=r"not a 3D image format.*\.nii\.gz"):
        check_suffix(tmp_path / name, (".nii.gz", ".nrrd"), "3D image")


def test_atomic_write_leaves_only_the_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_gives_the_usual_permissions_not_the_temp_files(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        target = tmp_path / "t.txt"
        atomic_write_text(target, "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
