"""The command line: bad input gives one clear line and a non-zero exit, no traceback, no partial output."""

import numpy as np
import pytest
from typer.testing import CliRunner

from crossreg.cli import app
from crossreg.image import from_array
from crossreg.imageio import save

runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


@pytest.fixture()
def t1_file(t1_2mm, tmp_path):
    path = tmp_path / "t1.nii.gz"
    save(t1_2mm, path)
    return path


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    return lines[0]


def test_missing_input(t1_file, tmp_path):
    result = run("register", str(t1_file), str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "t.tfm"))
    assert result.exit_code == 2
    assert "no such file" in one_error_line(result)
    assert not (tmp_path / "t.tfm").exists()


def test_not_an_image(t1_file, tmp_path):
    bad = tmp_path / "notes.nii.gz"
    bad.write_text("hello")
    result = run("register", str(t1_file), str(bad), "--out", str(tmp_path / "t.tfm"))
    assert result.exit_code == 2 and "not a readable image" in one_error_line(result)


def test_2d_against_3d(t1_file, tmp_path):
    flat = tmp_path / "slice.nii.gz"
    save(from_array(np.random.default_rng(0).random((40, 40))), flat)
    result = run("register", str(t1_file), str(flat), "--out", str(tmp_path / "t.tfm"))
    assert result.exit_code == 2 and "2D" in one_error_line(result)


@pytest.mark.parametrize("fill, words", [(7.0, "constant"), (np.nan, "NaN")])
def test_constant_and_nan_images(t1_file, tmp_path, fill, words):
    arr = np.full((20, 20, 20), fill, np.float32)
    arr[0, 0, 0] = 1.0 if np.isnan(fill) else fill
    bad = tmp_path / "bad.nii.gz"
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(arr), str(bad))  # ITK would read NIfTI NaN as 0: we must not
    result = run("register", str(t1_file), str(bad), "--out", str(tmp_path / "t.tfm"))
    assert result.exit_code == 2 and words in one_error_line(result)


def test_existing_output_needs_force(t1_file, tmp_path):
    out = tmp_path / "t.tfm"
    out.write_text("keep me")
    result = run("register", str(t1_file), str(t1_file), "--out", str(out))
    assert result.exit_code == 2 and "--force" in one_error_line(result)
    assert out.read_text() == "keep me"


def test_unwritable_output(t1_file, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("register", str(t1_file), str(t1_file), "--out", str(blocker / "sub" / "t.tfm"))
    assert result.exit_code == 2
    assert "not a directory" in one_error_line(result)


def test_cuda_without_gpu(t1_file, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run("register", str(t1_file), str(t1_file), "--out", str(tmp_path / "t.tfm"), "--device", "cuda")
    assert result.exit_code == 2 and "CUDA" in one_error_line(result)


def test_help_explains_direction():
    result = run("register", "--help")
    assert result.exit_code == 0
    assert "fixed->moving transform" in " ".join(result.output.split())
