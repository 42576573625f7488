import numpy as np
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreg.resample import resample
from crossreg.transform import AffineTransform, compose, read_transform, rigid_from_params, to_sitk

angles = st.lists(st.floats(-180, 180), min_size=3, max_size=3)
vectors = st.lists(st.floats(-100, 100), min_size=3, max_size=3)


def rigid(a, t, c=(0.0, 0.0, 0.0)) -> AffineTransform:
    return rigid_from_params(np.array(a), np.array(t), np.array(c))


@settings(max_examples=50, deadline=None)
@given(angles, vectors, angles, vectors)
def test_inverse_of_composition(a1, t1, a2, t2):
    ta, tb = rigid(a1, t1), rigid(a2, t2)
    pts = np.random.default_rng(0).normal(scale=50, size=(10, 3))
    both = compose(ta, tb)
    np.testing.assert_allclose(both.apply(pts), tb.apply(ta.apply(pts)), atol=1e-9)
    np.testing.assert_allclose(compose(tb.inverse(), ta.inverse()).apply(both.apply(pts)), pts, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(angles, vectors)
def test_rigid_is_proper_rotation(a, t):
    m = rigid(a, t).matrix
    np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(m), 1.0)


def test_rotation_angle_about_center_keeps_center_fixed():
    c = np.array([10.0, -5.0, 30.0])
    t = rigid_from_params(np.array([0.0, 0.0, 15.0]), np.zeros(3), c)
    np.testing.assert_allclose(t.apply(c[None])[0], c, atol=1e-12)
    assert abs(t.rotation_deg() - 15.0) < 1e-9


def test_tfm_file_is_read_by_simpleitk_as_the_same_map(tmp_path):
    t = compose(
        rigid([10, -20, 15], [15, -3, 7], [5, 5, 5]), AffineTransform(np.diag([1.1, 0.9, 1.0]), np.zeros(3))
    )
    path = tmp_path / "t.tfm"
    t.save(path)
    itk = sitk.ReadTransform(str(path))
    pts = np.random.default_rng(1).normal(scale=60, size=(20, 3))
    mapped = np.array([itk.TransformPoint(p.tolist()) for p in pts])
    np.testing.assert_allclose(mapped, t.apply(pts), atol=1e-9)
    back = read_transform(path)
    np.testing.assert_allclose(back.apply(pts), t.apply(pts), atol=1e-9)


def test_reads_euler_and_composite_transforms(tmp_path):
    euler = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    shift = sitk.TranslationTransform(3, (10.0, 0.0, -5.0))
    comp = sitk.CompositeTransform([euler, shift])
    path = tmp_path / "c.tfm"
    sitk.WriteTransform(comp, str(path))
    t = read_transform(path)
    pts = np.random.default_rng(2).normal(scale=40, size=(5, 3))
    expected = np.array([comp.TransformPoint(p.tolist()) for p in pts])
    np.testing.assert_allclose(t.apply(pts), expected, atol=1e-9)


def test_direction_convention_matches_simpleitk_resample(t1_2mm):
    """The transform maps fixed points to moving points: SimpleITK.Resample(moving, fixed, T) agrees."""
    from crossreg.imageio import to_sitk as image_to_sitk

    t = rigid([12, -8, 15], [15, 10, -5], t1_2mm.grid.center_mm())
    ours = resample(t1_2mm, t1_2mm.grid, t)
    moving = image_to_sitk(t1_2mm)
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, moving, to_sitk(t), sitk.sitkLinear, 0.0))
    inside = ours.mask
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours.array[inside], theirs[inside], atol=1e-3 * t1_2mm.array.max())
    # The inverse is a different map: a wrong direction would not agree.
    wrong = resample(t1_2mm, t1_2mm.grid, t.inverse())
    assert np.abs(wrong.array[inside] - theirs[inside]).mean() > 5.0
