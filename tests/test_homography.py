"""2D homographies: estimation (crossreg.estimate, crossreg.homography), HomographyTransform, the files
they are written as, and ``crossreg register --model homography`` end to end."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from crossreg import datasets
from crossreg.cli import app
from crossreg.config import RegisterConfig
from crossreg.deformation import field_to_sitk
from crossreg.errors import InvalidConfigError, OutputWriteError, RegistrationFailed
from crossreg.estimate import RansacConfig, estimate
from crossreg.homography import degenerate_quads, fit_homography
from crossreg.imageio import load, save
from crossreg.register import register
from crossreg.transform import HomographyTransform, displacement_field, read_homography

runner = CliRunner()


def about(centre_mm: np.ndarray, local: np.ndarray) -> HomographyTransform:
    """The homography ``local`` (3 x 3) applied in coordinates centred on ``centre_mm``."""
    shift, back = np.eye(3), np.eye(3)
    shift[:2, 2], back[:2, 2] = -centre_mm, centre_mm
    h = back @ local @ shift
    return HomographyTransform(h / h[2, 2])


TRUTH = about(np.array([10.0, -20.0]), np.array([[1.04, 0.06, 8.0], [-0.05, 0.97, -6.0], [8e-4, -6e-4, 1.0]]))


def noisy_matches(
    seed: int = 0, n: int = 300, outliers: float = 0.3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed points (n, 2) in a 200 mm square, their images under TRUTH with 0.2 mm noise, and a share
    replaced by random points; the inlier mask (n,)."""
    rng = np.random.default_rng(seed)
    src = rng.uniform(-90, 110, (n, 2))
    dst = TRUTH.apply(src) + rng.normal(0.0, 0.2, (n, 2))
    wrong = rng.random(n) < outliers
    dst[wrong] = rng.uniform(-120, 140, (int(wrong.sum()), 2))
    return src, dst, ~wrong


def test_known_homography_recovered_among_outliers():
    src, dst, right = noisy_matches()
    found = estimate(src, dst, "homography", RansacConfig(iterations=1000), seed=0)
    error = np.linalg.norm(found.transform.apply(src[right]) - TRUTH.apply(src[right]), axis=1)
    assert np.sqrt((error**2).mean()) < 0.1, error
    assert found.inliers.numpy()[right].mean() > 0.98 and not found.inliers.numpy()[~right].any()
    assert found.confidence > 0.99
    # An affine fit cannot follow the perspective: it leaves millimetres at the same points.
    affine = estimate(src, dst, "affine", RansacConfig(iterations=1000), seed=0).transform
    assert np.linalg.norm(affine.apply(src[right]) - TRUTH.apply(src[right]), axis=1).max() > 2.0


def test_estimate_does_not_depend_on_the_order_of_the_matches():
    src, dst, _ = noisy_matches(seed=1)
    order = np.random.default_rng(2).permutation(len(src))
    a = estimate(src, dst, "homography", RansacConfig(iterations=1000), seed=0)
    b = estimate(src[order], dst[order], "homography", RansacConfig(iterations=1000), seed=5)
    assert torch.equal(a.inliers[order], b.inliers)
    probe = np.random.default_rng(3).uniform(-90, 110, (50, 2))
    assert np.abs(a.transform.apply(probe) - b.transform.apply(probe)).max() < 1e-6


def test_exact_minimal_fit_and_batching():
    rng = np.random.default_rng(4)
    src = torch.from_numpy(rng.uniform(-100, 100, (7, 4, 2)))
    dst = torch.from_numpy(TRUTH.apply(src.reshape(-1, 2).numpy()).reshape(7, 4, 2))
    h = fit_homography(src, dst)
    assert h.shape == (7, 3, 3)
    assert np.allclose(h.numpy(), np.broadcast_to(TRUTH.matrix, (7, 3, 3)), atol=1e-9)


def test_collinear_samples_are_rejected():
    square = torch.tensor([[0.0, 0.0], [50.0, 0.0], [50.0, 50.0], [0.0, 50.0]])
    three_on_a_line = torch.tensor([[0.0, 0.0], [25.0, 0.2], [50.0, 0.0], [0.0, 50.0]])
    folded = square[[0, 1, 3, 2]]  # a bow tie: no homography maps a square onto it without a fold
    src = torch.stack([square, three_on_a_line, square, square])
    dst = torch.stack([square * 1.1, square, three_on_a_line, folded])
    assert degenerate_quads(src, dst, 1.0).tolist() == [False, True, True, True]
    # All matches on one line: every sample is degenerate, and estimate says so.
    t = np.linspace(0.0, 100.0, 40)
    line = np.stack([t, 0.5 * t], axis=1)
    with pytest.raises(RegistrationFailed, match="degenerate"):
        estimate(line, line + 3.0, "homography", RansacConfig(iterations=200), seed=0)


def test_3d_points_are_refused():
    points = np.random.default_rng(0).uniform(0, 100, (30, 3))
    with pytest.raises(InvalidConfigError, match="2D"):
        estimate(points, points, "homography")


def test_inverse_round_trip():
    points = np.random.default_rng(5).uniform(-100, 120, (200, 2))
    back = TRUTH.inverse().apply(TRUTH.apply(points))
    assert np.abs(back - points).max() < 1e-6
    assert np.abs(TRUTH.inverse().inverse().matrix - TRUTH.matrix).max() < 1e-12


def test_displacement_field_read_back_by_simpleitk_reproduces_the_homography(tmp_path):
    fixed = datasets.mni152_slice(2, "axial", 44)  # direction diag(-1, -1): world and index axes differ
    path = tmp_path / "field.nii.gz"
    sitk.WriteImage(field_to_sitk(displacement_field(TRUTH, fixed.grid)), str(path))
    field = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
    rng = np.random.default_rng(6)
    points = fixed.grid.index_to_world(rng.uniform(0, 1, (300, 2)) * (fixed.grid.size_xyz - 1))
    moved = np.array([field.TransformPoint(p.tolist()) for p in points])
    assert np.abs(moved - TRUTH.apply(points)).max() < 0.01


def test_json_round_trip(tmp_path):
    path = tmp_path / "T.json"
    path.write_text(TRUTH.to_json())
    content = json.loads(path.read_text())
    assert (content["model"], content["direction"], content["units"], content["space"]) == (
        "homography",
        "fixed_to_moving",
        "mm",
        "LPS",
    )
    assert np.array_equal(read_homography(path).matrix, TRUTH.matrix)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    """The shipped axial slice (2 mm pixels) and the same slice seen through a known homography about
    its centre, as files; the true homography."""
    from crossreg.synth.geometry import move

    folder = tmp_path_factory.mktemp("pair")
    fixed = datasets.mni152_slice(2, "axial", 44)
    local = np.array([[1.03, 0.04, 4.0], [-0.03, 0.98, -3.0], [1.5e-3, -1e-3, 1.0]])
    truth = about(fixed.grid.center_mm(), local)
    save(fixed, folder / "fixed.nii.gz")
    save(move(fixed, truth), folder / "moving.nii.gz")
    return folder, truth


def test_register_homography_writes_json_and_field(pair_files, tmp_path):
    folder, truth = pair_files
    out = tmp_path / "T.json"
    paths = (str(folder / "fixed.nii.gz"), str(folder / "moving.nii.gz"))
    # MIND-SSC descriptors: on a 2 mm slice the matcher network's matches are coarser (corners 1.5-2.8 mm)
    options = ["--model", "homography", "--matching", "descriptors", "--out", str(out)]
    done = runner.invoke(app, ["register", *paths, *options])
    assert done.exit_code == 0, done.output
    corners = datasets.mni152_slice(2, "axial", 44).grid.corners_mm()
    found = read_homography(out)
    # The corners lie outside the head, where no match is: measured 0.49-1.38 mm (0.26-0.75 mm while
    # the outermost voxel of the template's zero-padded head still counted as data).
    assert np.linalg.norm(found.apply(corners) - truth.apply(corners), axis=1).max() < 2.0
    field = sitk.DisplacementFieldTransform(
        sitk.ReadImage(str(tmp_path / "T_field.nii.gz"), sitk.sitkVectorFloat64)
    )
    via_field = np.array([field.TransformPoint(p.tolist()) for p in corners])
    assert np.abs(via_field - found.apply(corners)).max() < 0.01
    again = runner.invoke(app, ["register", *paths, *options])
    assert again.exit_code == 2 and "--force" in again.output


def test_register_homography_refuses_a_tfm_and_3d_images(pair_files, t1_2mm, tmp_path):
    folder, _ = pair_files
    paths = (str(folder / "fixed.nii.gz"), str(folder / "moving.nii.gz"))
    tfm = runner.invoke(app, ["register", *paths, "--model", "homography", "--out", str(tmp_path / "T.tfm")])
    assert tfm.exit_code == 2 and "T.json" in tfm.output and "Traceback" not in tfm.output
    save(t1_2mm, tmp_path / "t1.nii.gz")
    volume = str(tmp_path / "t1.nii.gz")
    three = runner.invoke(
        app, ["register", volume, volume, "--model", "homography", "--out", str(tmp_path / "T.json")]
    )
    assert three.exit_code == 2 and "2D" in three.output and "Traceback" not in three.output
    assert list(tmp_path.glob("T*")) == []


def test_result_save_refuses_a_homography_as_tfm(tmp_path):
    from crossreg.result_files import check_transform_path

    with pytest.raises(OutputWriteError, match=r"T\.json"):
        check_transform_path(tmp_path / "T.tfm", "homography")


def test_the_matcher_networks_homography_lands_within_its_match_precision(pair_files):
    folder, truth = pair_files
    fixed, moving = load(folder / "fixed.nii.gz"), load(folder / "moving.nii.gz")
    config = RegisterConfig(model="homography", matching="matcher2d")
    found = register(fixed, moving, config).transform
    corners = fixed.grid.corners_mm()
    error = np.linalg.norm(found.apply(corners) - truth.apply(corners), axis=1)
    # Coarser than the descriptors' above at its worst (no intensity polish after a homography):
    # measured 0.34-2.18 mm; the identity would leave 3.7-25 mm.
    assert error.max() < 4.0
    assert np.linalg.norm(corners - truth.apply(corners), axis=1).max() > 20.0
