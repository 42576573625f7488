from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.collections import LineCollection

import crossreg
from crossreg.deformable.stage import DeformableResult
from crossreg.deformation import DeformableTransform
from crossreg.errors import DimensionMismatchError
from crossreg.image import Grid, Image, fov_mask, from_array
from crossreg.imageio import load
from crossreg.qa_figure import qa_figure, save_qa
from crossreg.qa_views import (
    ZoomView,
    jacobian_slice,
    warped_grid_lines,
    zoom_box,
    zoom_views,
)
from crossreg.resample import resample
from crossreg.synth.cases import make_case
from crossreg.transform import AffineTransform, rigid_from_params

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


def _views(image: Image, center_mm: np.ndarray, half_mm: float) -> list[ZoomView]:
    """The zoomed views of ``image`` over itself in a box ``half_mm`` either side of ``center_mm``."""
    box = np.stack([center_mm - half_mm, center_mm + half_mm])
    return zoom_views(image, image, [("before", AffineTransform.identity(image.ndim))], box)


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
    views = {v.name: v for v in _views(image, CENTER, 48.0)}
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
    (view,) = (v for v in _views(image, center, 12.0) if v.name == plane)
    lo, hi = np.percentile(image.array, [0.5, 99.5])
    inside = view.fixed > 0
    assert inside.mean() > 0.5
    np.testing.assert_allclose(view.fixed[inside], (center[axis] - lo) / (hi - lo), atol=1e-4)


def test_2d_display_is_x_right_y_down():
    ball = np.linalg.norm(np.indices((60, 80)) - np.array([45, 60])[:, None, None], axis=0) < 6
    image = from_array(ball.astype(np.float32), spacing_mm=(1.0, 1.0))  # ball at x = 60, y = 45 mm
    (view,) = _views(image, np.array([40.0, 30.0]), 25.0)
    rows, cols = np.nonzero(view.fixed > 0.5)
    expected = view.project(np.array([[60.0, 45.0]]))[0][0]
    assert expected[0] > view.fixed.shape[1] / 2 and expected[1] > view.fixed.shape[0] / 2
    np.testing.assert_allclose([cols.mean(), rows.mean()], expected, atol=0.5)
    assert view.letters == ("R", "L", "A", "P")


def test_display_has_physical_aspect():
    """A ball stored in 1 x 2 x 3 mm voxels displays as a disc, not an ellipse."""
    image = _blob_image((0, 0, 0))
    for view in _views(image, CENTER, 30.0):
        rows, cols = np.nonzero(view.fixed > 0.5)
        assert abs(np.ptp(rows) - np.ptp(cols)) * view.grid.spacing_mm[0] <= 2.0, view.name


@pytest.mark.parametrize(
    "direction",
    [np.diag([-1.0, -1.0, 1.0]), np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])],
)
def test_flipped_and_permuted_storage_display_the_same(direction):
    image = _blob_image((20, -15, 10))
    other = _reoriented(image, direction)
    assert not np.allclose(other.direction, image.direction)
    for a, b in zip(_views(image, CENTER, 40.0), _views(other, CENTER, 40.0), strict=True):
        assert a.fixed.shape == b.fixed.shape
        np.testing.assert_allclose(a.fixed, b.fixed, atol=1e-4, err_msg=a.name)


def test_dimension_mismatch_raises(mni):
    box = np.stack([mni.grid.corners_mm().min(axis=0), mni.grid.corners_mm().max(axis=0)])
    with pytest.raises(DimensionMismatchError):
        zoom_views(mni, _mni_slice(mni), [("before", AffineTransform.identity(3))], box)


@pytest.fixture(scope="module")
def cone_case(mni):
    """A synthetic ultrasound cone of the MNI brain, moved by a rigid motion (its truth)."""
    return make_case(mni, "us", angle_deg=10.0, translation_mm=10.0, seed=3)


def _field_image(grid: Grid, displacement) -> Image:
    """A field Image on ``grid`` whose vector at world point ``x`` ``(..., d)`` is ``displacement(x)``."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")[::-1], axis=-1)
    world = grid.index_to_world(idx.reshape(-1, grid.ndim)).reshape(*grid.shape, grid.ndim)
    return Image(displacement(world).astype(np.float32), grid)


def _ramp(shape: tuple[int, ...]) -> Image:
    """An image of ``shape`` centred on the world origin, 2 mm voxels, intensity rising along x."""
    spacing = (2.0,) * len(shape)
    image = from_array(np.indices(shape)[-1].astype(np.float32), spacing_mm=spacing)
    return Image(image.array, Grid(shape, spacing, tuple(-float(n) for n in shape[::-1]), np.eye(len(shape))))


def _bump(center_mm: np.ndarray, amplitude_mm: float, sigma_mm: float = 6.0):
    """A displacement along world +x, Gaussian in space around ``center_mm``; zero far from it."""

    def displacement(world: np.ndarray) -> np.ndarray:
        weight = np.exp(-0.5 * (np.linalg.norm(world - center_mm, axis=-1) / sigma_mm) ** 2)
        out = np.zeros_like(world)
        out[..., 0] = amplitude_mm * weight
        return out

    return displacement


def _deformable(linear: AffineTransform, field: Image, max_mm: float = 0.0) -> DeformableResult:
    return DeformableResult(DeformableTransform(linear, field), 0.0, 0.0, max_mm, 0, 0.0)


def test_zoom_box_holds_the_cone_and_is_smaller_than_the_head(cone_case):
    fixed, moving, t = cone_case.fixed, cone_case.moving, cone_case.true_transform
    box = zoom_box(fixed, moving, t, margin_mm=10.0)
    cone_mm = moving.grid.index_to_world(np.argwhere(fov_mask(moving))[:, ::-1])
    in_fixed = t.inverse().apply(cone_mm)
    assert (in_fixed >= box[0] - 1.0).all() and (in_fixed <= box[1] + 1.0).all()
    # The margin is there: the box reaches about 10 mm past the cone on some side.
    assert (np.concatenate([in_fixed.min(axis=0) - box[0], box[1] - in_fixed.max(axis=0)]) > 7.0).any()
    head = np.ptp(fixed.grid.corners_mm(), axis=0).prod()
    assert np.ptp(box, axis=0).prod() < 0.25 * head


def test_zoom_box_follows_the_cone_through_the_transform(cone_case):
    """A wrong transform puts the box elsewhere: the box is the cone mapped, not the cone's own grid."""
    fixed, moving, t = cone_case.fixed, cone_case.moving, cone_case.true_transform
    shifted = AffineTransform(t.matrix, t.translation_mm + np.array([0.0, 0.0, 20.0]))
    a, b = zoom_box(fixed, moving, t), zoom_box(fixed, moving, shifted)
    centre_shift = b.mean(axis=0) - a.mean(axis=0)
    # moving = T(fixed) + 20 mm in z: the cone sits 20 mm lower in fixed space (clipping aside).
    assert centre_shift[2] < -10.0 and abs(centre_shift[0]) < 3.0


def test_zoom_box_is_the_fixed_fov_when_the_fixed_image_is_smaller(cone_case):
    fixed, moving, t = cone_case.moving, cone_case.fixed, cone_case.true_transform.inverse()
    box = zoom_box(fixed, moving, t, margin_mm=0.0)
    cone_mm = fixed.grid.index_to_world(np.argwhere(fov_mask(fixed))[:, ::-1])
    np.testing.assert_allclose(box[0], cone_mm.min(axis=0), atol=4.0)
    np.testing.assert_allclose(box[1], cone_mm.max(axis=0), atol=4.0)


@pytest.mark.parametrize("scale", [1.1, 0.8])
def test_jacobian_of_a_uniform_scaling_is_its_volume_ratio(scale):
    grid = Grid((40, 40, 40), (2.0, 2.0, 2.0), (-40.0, -40.0, -40.0), np.eye(3))
    field = _field_image(grid, lambda x: (scale - 1.0) * x)
    t = DeformableTransform(AffineTransform.identity(3), field)
    for view in _views(_ramp((40, 40, 40)), np.zeros(3), 20.0):
        det = jacobian_slice(t, view.grid)
        assert det.shape == view.fixed.shape
        np.testing.assert_allclose(det, scale**3, rtol=1e-3, err_msg=view.name)


def test_jacobian_flags_folding_in_2d():
    grid = Grid((30, 30), (1.0, 1.0), (-15.0, -15.0), np.eye(2))
    field = _field_image(grid, lambda x: np.stack([-1.5 * x[..., 0], 0.0 * x[..., 1]], axis=-1))
    t = DeformableTransform(AffineTransform.identity(2), field)
    (view,) = _views(_ramp((30, 30)), np.zeros(2), 10.0)
    np.testing.assert_allclose(jacobian_slice(t, view.grid), -0.5, rtol=1e-3)


def test_warped_grid_lines_move_only_where_the_field_is(mni):
    centre = mni.grid.center_mm()
    field = _field_image(mni.grid, _bump(centre, 5.0))
    t = DeformableTransform(AffineTransform.identity(3), field)
    (axial,) = (v for v in _views(mni, centre, 40.0) if v.name == "axial")
    still = np.concatenate(
        warped_grid_lines(DeformableTransform(t.linear, field.with_array(0 * field.array)), axial.grid, 8.0)
    )
    moved = np.concatenate(warped_grid_lines(t, axial.grid, 8.0))
    shift_px = moved - still
    centre_px = axial.project(centre[None])[0][0]
    near = np.linalg.norm(still - centre_px, axis=1) * axial.grid.spacing_mm[0] < 2.0
    far = np.linalg.norm(still - centre_px, axis=1) * axial.grid.spacing_mm[0] > 30.0
    assert near.any() and far.any()
    # World +x is screen right in an axial slice: the grid moves right by 5 mm at the bump's centre.
    np.testing.assert_allclose(shift_px[near, 0] * axial.grid.spacing_mm[0], 5.0, atol=0.3)
    np.testing.assert_allclose(shift_px[near, 1], 0.0, atol=1e-6)
    assert np.abs(shift_px[far]).max() * axial.grid.spacing_mm[0] < 0.05


def test_edges_lie_on_a_ball_boundary():
    image = _blob_image((0, 0, 0), spacing=(1.0, 1.0, 1.0))
    for view in _views(image, CENTER, 20.0):
        rows, cols = np.nonzero(view.edges)
        centre_px = view.project(CENTER[None])[0][0]
        radius_mm = np.hypot(cols - centre_px[0], rows - centre_px[1]) * view.grid.spacing_mm[0]
        assert len(rows) > 50
        np.testing.assert_allclose(np.median(radius_mm), 8.0, atol=1.0, err_msg=view.name)
        assert np.percentile(np.abs(radius_mm - 8.0), 95) < 2.0, view.name


def test_fusion_after_registration_matches_better_than_before(cone_case):
    fixed, moving, t = cone_case.fixed, cone_case.moving, cone_case.true_transform
    same = make_case(fixed, "same", angle_deg=10.0, translation_mm=10.0, seed=3, corruption=None)
    stages = [("before", AffineTransform.identity(3)), ("after", same.true_transform)]
    for view in zoom_views(fixed, same.moving, stages, zoom_box(fixed, moving, t)):
        before, after = view.moving
        err = {k: np.nanmean(np.abs(m - view.fixed)) for k, m in (("before", before), ("after", after))}
        assert err["after"] < 0.3 * err["before"] and err["after"] < 0.05, (view.name, err)


def _check_png(path: Path, fig_size_in: np.ndarray, dpi: int) -> None:
    pixels = matplotlib.image.imread(path)
    width, height = np.round(fig_size_in * dpi).astype(int)
    assert pixels.shape[:2] == (height, width)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.1
    assert (rgb.max(axis=-1) - rgb.min(axis=-1) > 0.2).mean() > 0.02  # the amber fusion is there


def test_save_qa_rigid_cone(tmp_path, cone_case):
    fixed, moving, t = cone_case.fixed, cone_case.moving, cone_case.true_transform
    path = tmp_path / "qa.png"
    save_qa(path, fixed, moving, t, None, "cone, rigid", confidence=0.9, dpi=50)
    assert [p.name for p in tmp_path.iterdir()] == ["qa.png"]
    fig = qa_figure(fixed, moving, t, None, "cone, rigid", confidence=0.9)
    assert len(fig.axes) == 12  # before / after rigid x 3 planes x (fusion, edges)
    assert [ax.get_ylabel() for ax in fig.axes[::6]] == ["before (identity)", "after rigid"]
    assert "rotation 10.0°" in fig.get_supxlabel() and "confidence 0.90" in fig.get_supxlabel()
    _check_png(path, fig.get_size_inches(), 50)


def test_qa_figure_deformable_adds_a_stage_and_the_deformation_row(tmp_path, cone_case):
    fixed, moving, t = cone_case.fixed, cone_case.moving, cone_case.true_transform
    coarse = Grid((30, 30, 30), (4.0, 4.0, 4.0), tuple(fixed.grid.center_mm() - 58.0), np.eye(3))
    field = _field_image(coarse, _bump(fixed.grid.center_mm(), 3.0, 10.0))
    fig = qa_figure(fixed, moving, t, _deformable(t, field, max_mm=3.0), "cone, deformable")
    labels = [ax.get_ylabel() for ax in fig.axes[:24:6]]
    assert labels == ["before (identity)", "after rigid", "after deformable", "deformation"]
    assert len(fig.axes) == 25  # 4 rows x 6 panels and the det J colour bar
    assert any(isinstance(c, LineCollection) for c in fig.axes[18].collections)
    assert "max displacement 3.0 mm" in fig.get_supxlabel()
    fig.savefig(tmp_path / "qa.png", dpi=30)
    _check_png(tmp_path / "qa.png", fig.get_size_inches(), 30)


def test_save_qa_2d_real_data(tmp_path, mni):
    fixed = _mni_slice(mni)
    t = rigid_from_params(np.array([10.0]), np.array([5.0, -3.0]), fixed.grid.center_mm())
    moving = resample(fixed, fixed.grid, t.inverse())
    path = tmp_path / "qa2d.png"
    save_qa(path, fixed, moving, t, None, "2D", dpi=50)
    fig = qa_figure(fixed, moving, t, None, "2D")
    assert len(fig.axes) == 4
    _check_png(path, fig.get_size_inches(), 50)
