from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.collections import LineCollection

import crossreg
from crossreg.errors import DimensionMismatchError
from crossreg.image import Grid, Image, from_array
from crossreg.imageio import load
from crossreg.resample import resample
from crossreg.transform import AffineTransform, rigid_from_params
from crossreg.viz import checkerboard, plane_views, qa_figure, save_qa, tiles

DATA = Path(crossreg.__file__).parent / "data"


@pytest.fixture(scope="module")
def mni() -> Image:
    return load(DATA / "mni152_t1_2mm.nii.gz")


@pytest.fixture(scope="module")
def registered_pair(mni):
    """(fixed, moving, T) with moving = fixed moved by T, so T registers them exactly."""
    t = rigid_from_params(np.array([8.0, -5.0, 12.0]), np.array([9.0, -6.0, 4.0]), mni.grid.center_mm())
    return mni, resample(mni, mni.grid, t.inverse()), t


def _mni_slice(mni: Image) -> Image:
    """A real 2D image: a coronal MNI slice, x by z spacing."""
    return from_array(mni.array[:, 50, :], spacing_mm=(mni.spacing_mm[0], mni.spacing_mm[2]))


def _blob_image(offset_mm, spacing=(1.0, 2.0, 3.0)) -> Image:
    """A 3D image (identity direction, anisotropic voxels) holding one 8 mm-radius ball at center + offset."""
    shape_xyz = np.round(np.array([96.0, 96.0, 96.0]) / spacing).astype(int)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape_xyz[::-1]], indexing="ij")[::-1], axis=-1)
    world = idx * np.array(spacing)
    ball = np.linalg.norm(world - (48.0 + np.asarray(offset_mm)), axis=-1) < 8.0
    return from_array(ball.astype(np.float32), spacing_mm=spacing)


def _reoriented(image: Image, direction: np.ndarray) -> Image:
    """The same world content stored with another direction (voxel centres coincide: no interpolation)."""
    perm = np.argmax(np.abs(direction.T), axis=1)  # world axis of each new index axis
    spacing = tuple(image.spacing_mm[p] for p in perm)
    size = image.grid.size_xyz[perm]
    corners = image.grid.corners_mm()
    origin = np.where(direction.sum(axis=1) < 0, corners.max(axis=0), corners.min(axis=0))
    grid = Grid(tuple(int(s) for s in size[::-1]), spacing, tuple(origin), direction)
    return resample(image, grid)


CENTER = np.full(3, 48.0)
# (patient direction of the ball, world offset, {plane: (axis 0=column/1=row, sign of pixel offset)})
ORIENTATION_CASES = [
    ("left", (25, 0, 0), {"axial": (0, +1), "coronal": (0, +1)}),
    ("anterior", (0, -25, 0), {"axial": (1, -1), "sagittal": (0, -1)}),
    ("superior", (0, 0, 25), {"coronal": (1, -1), "sagittal": (1, -1)}),
]


@pytest.mark.parametrize(("where", "offset", "expected"), ORIENTATION_CASES)
def test_slices_use_radiological_orientation(where, offset, expected):
    image = _blob_image(offset)
    views = {v.name: v for v in plane_views(image, image, AffineTransform.identity(3), CENTER)}
    for name, (axis, sign) in expected.items():
        view = views[name]
        rows, cols = np.nonzero(view.fixed > 0.5)
        assert rows.size > 20, f"{where} ball not visible in {name}"
        centre_px = view.project(CENTER[None])[0][0]
        shift_px = np.array([cols.mean(), rows.mean()]) - centre_px
        assert np.sign(shift_px[axis]) == sign and abs(shift_px[axis]) > 10, (where, name, shift_px)


@pytest.mark.parametrize(("plane", "axis"), [("axial", 2), ("coronal", 1), ("sagittal", 0)])
def test_slice_passes_through_the_centre(plane, axis):
    """An intensity ramp along the plane normal is constant on the slice, at the centre's value."""
    world_zyx = np.indices((40, 44, 48), dtype=np.float32)
    image = from_array(world_zyx[2 - axis], spacing_mm=(1.0, 1.0, 1.0))
    center = np.array([20.3, 17.6, 23.2])
    (view,) = (v for v in plane_views(image, image, AffineTransform.identity(3), center) if v.name == plane)
    lo, hi = np.percentile(image.array, [0.5, 99.5])
    inside = view.fixed > 0
    assert inside.mean() > 0.5
    np.testing.assert_allclose(view.fixed[inside], (center[axis] - lo) / (hi - lo), atol=1e-4)


def test_2d_display_is_x_right_y_down():
    ball = np.linalg.norm(np.indices((60, 80)) - np.array([45, 60])[:, None, None], axis=0) < 6
    image = from_array(ball.astype(np.float32), spacing_mm=(1.0, 1.0))  # ball at x = 60, y = 45 mm
    (view,) = plane_views(image, image, AffineTransform.identity(2))
    rows, cols = np.nonzero(view.fixed > 0.5)
    np.testing.assert_allclose([cols.mean(), rows.mean()], [60, 45], atol=0.5)
    assert view.letters == ("R", "L", "A", "P")


def test_display_has_physical_aspect():
    """A ball stored in 1 x 2 x 3 mm voxels displays as a disc, not an ellipse."""
    image = _blob_image((0, 0, 0))
    for view in plane_views(image, image, AffineTransform.identity(3), CENTER):
        rows, cols = np.nonzero(view.fixed > 0.5)
        assert abs(np.ptp(rows) - np.ptp(cols)) <= 2, view.name


@pytest.mark.parametrize(
    "direction",
    [np.diag([-1.0, -1.0, 1.0]), np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])],
)
def test_flipped_and_permuted_storage_display_the_same(direction):
    image = _blob_image((20, -15, 10))
    other = _reoriented(image, direction)
    assert not np.allclose(other.direction, image.direction)
    ident = AffineTransform.identity(3)
    for a, b in zip(
        plane_views(image, image, ident, CENTER), plane_views(other, other, ident, CENTER), strict=True
    ):
        assert a.fixed.shape == b.fixed.shape
        np.testing.assert_allclose(a.fixed, b.fixed, atol=1e-4, err_msg=a.name)


def test_checkerboard_alternates_tiles():
    a, b = np.zeros((8, 8)), np.ones((8, 8))
    board = checkerboard(a, b, 2)
    assert board[0, 0] == 0 and board[0, 2] == 1 and board[2, 0] == 1 and board[2, 2] == 0
    assert tiles((8, 8), 2).sum() == 32


def test_before_and_after_differ_for_a_non_identity_transform(registered_pair):
    fixed, moving, t = registered_pair
    for view in plane_views(fixed, moving, t):
        assert np.abs(view.before - view.after).mean() > 0.02, view.name
    for view in plane_views(fixed, moving, AffineTransform.identity(3), fixed.grid.center_mm()):
        np.testing.assert_array_equal(view.before, view.after)


def test_after_checkerboard_matches_better_than_before(registered_pair):
    fixed, moving, t = registered_pair
    for view in plane_views(fixed, moving, t, fixed.grid.center_mm()):
        mismatch = {
            name: np.abs(checkerboard(view.fixed, m, 8) - view.fixed).mean()
            for name, m in (("before", view.before), ("after", view.after))
        }
        assert mismatch["after"] < 0.25 * mismatch["before"], (view.name, mismatch)
        assert mismatch["after"] < 0.02, (view.name, mismatch)


def test_match_lines_join_fixed_points_to_their_moving_partners(registered_pair):
    fixed, moving, t = registered_pair
    rng = np.random.default_rng(1)
    lo, hi = fixed.grid.corners_mm().min(axis=0), fixed.grid.corners_mm().max(axis=0)
    fixed_mm = lo + rng.uniform(0.25, 0.75, (400, 3)) * (hi - lo)
    inlier = rng.uniform(size=400) < 0.7
    moving_mm = t.apply(fixed_mm) + np.where(inlier[:, None], 0.0, 30.0)
    fig = qa_figure(fixed, moving, t, (fixed_mm, moving_mm, inlier), "matches")
    assert len(fig.axes) == 9
    views = plane_views(fixed, moving, t, fixed_mm[inlier].mean(axis=0))
    for ax, view in zip(fig.axes[2::3], views, strict=True):
        outliers, inliers = (c.get_segments() for c in ax.collections if isinstance(c, LineCollection))
        assert len(inliers) > 5 and len(outliers) > 0
        seg = np.array(inliers)
        offset = view.fixed.shape[1] + max(4, view.fixed.shape[1] // 30)
        np.testing.assert_allclose(seg[:, 1] - seg[:, 0], np.tile([offset, 0.0], (len(seg), 1)), atol=1e-6)


def _check_png(path: Path, fig_size_in: np.ndarray, dpi: int) -> None:
    pixels = matplotlib.image.imread(path)
    width, height = np.round(fig_size_in * dpi).astype(int)
    assert pixels.shape[:2] == (height, width)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.1
    assert (rgb.max(axis=-1) - rgb.min(axis=-1) > 0.2).mean() > 0.02  # the amber tiles are there


def test_save_qa_3d_real_data(tmp_path, registered_pair):
    fixed, moving, t = registered_pair
    path = tmp_path / "qa.png"
    save_qa(path, fixed, moving, t, None, "MNI152, rigid", dpi=60)
    assert [p.name for p in tmp_path.iterdir()] == ["qa.png"]
    fig = qa_figure(fixed, moving, t, None, "MNI152, rigid")
    assert len(fig.axes) == 6
    _check_png(path, fig.get_size_inches(), 60)


def test_save_qa_2d_real_data(tmp_path, mni):
    fixed = _mni_slice(mni)
    t = rigid_from_params(np.array([10.0]), np.array([5.0, -3.0]), fixed.grid.center_mm())
    moving = resample(fixed, fixed.grid, t.inverse())
    pts = fixed.grid.center_mm() + np.random.default_rng(0).normal(0, 20, (30, 2))
    matches = (pts, t.apply(pts), np.arange(30) % 3 > 0)
    path = tmp_path / "qa2d.png"
    save_qa(path, fixed, moving, t, matches, "2D", dpi=50)
    fig = qa_figure(fixed, moving, t, matches, "2D")
    assert len(fig.axes) == 3
    _check_png(path, fig.get_size_inches(), 50)


def test_dimension_mismatch_raises(mni):
    with pytest.raises(DimensionMismatchError):
        plane_views(mni, _mni_slice(mni), AffineTransform.identity(3))
