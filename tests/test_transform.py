import numpy as np
import pytest
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


@pytest.mark.parametrize("ndim", [3, 2])
def test_tfm_applied_by_ants_lands_the_moving_image_as_simpleitk_does(t1_2mm, tmp_path, ndim):
    """README: ``antsApplyTransforms -r fixed -i moving -t T.tfm`` takes crossreg's file unchanged.

    The moving image is the fixed one moved by a known affine ``t``, stored on an oblique anisotropic
    grid of its own; the fixed one has direction diag(-1, -1(, 1)). ANTs, given the file ``t.save``
    writes, must put the moving image back onto the fixed one where ``SimpleITK.Resample`` does; the
    identity, the inverse and ``t`` taken as RAS (an LPS/RAS mix-up) must not.
    """
    ants = pytest.importorskip("ants")
    from crossreg.datasets import mni152_slice
    from crossreg.imageio import load, save
    from crossreg.synth.geometry import move, resample_anisotropic

    fixed = t1_2mm if ndim == 3 else mni152_slice(2, "axial", 44)
    c = fixed.grid.center_mm()
    angles, shift, tilt = ([10, -6, 14], [12, -8, 5], [20, 15, -10]) if ndim == 3 else ([14], [12, -8], [20])
    strain = np.diag([1.1, 1.0, 0.92] if ndim == 3 else [1.1, 0.92])
    strain[0, 1] = 0.05
    t = compose(AffineTransform(strain, c - strain @ c), rigid(angles, shift, c))
    oblique = rigid(tilt, np.zeros(ndim), np.zeros(ndim)).matrix @ fixed.direction
    moving = resample_anisotropic(move(fixed, t), (1.5, 2.0, 2.5)[:ndim], oblique, antialias=False)
    path = {k: str(tmp_path / f"{k}.nii.gz") for k in ("fixed", "moving", "by_ants")}
    save(fixed, path["fixed"])
    save(moving, path["moving"])
    tfm = str(tmp_path / "T.tfm")

    def by_ants(transform: AffineTransform):
        transform.save(tfm)
        fixed_ants, moving_ants = ants.image_read(path["fixed"]), ants.image_read(path["moving"])
        ants.image_write(ants.apply_transforms(fixed_ants, moving_ants, transformlist=[tfm]), path["by_ants"])
        return load(path["by_ants"])

    landed = by_ants(t)
    np.testing.assert_allclose(landed.origin_mm, fixed.origin_mm, atol=1e-4)
    np.testing.assert_allclose(landed.direction, fixed.direction, atol=1e-6)
    by_sitk = sitk.GetArrayFromImage(
        sitk.Resample(sitk.ReadImage(path["moving"]), sitk.ReadImage(path["fixed"]), sitk.ReadTransform(tfm))
    )
    inside = resample(load(path["moving"]), fixed.grid, t).mask  # fixed voxels that t maps into moving
    assert inside.mean() > 0.9
    on_ants, on_sitk, on_fixed = landed.array[inside], by_sitk[inside], fixed.array[inside]
    # Both tools run ITK's linear interpolator, so they agree to rounding (measured: identical).
    assert np.corrcoef(on_ants, on_sitk)[0, 1] > 0.999 and np.abs(on_ants - on_sitk).mean() < 0.01
    # ... and land the moving image on the fixed one, up to two interpolations (measured 0.997, 3.4-3.7).
    assert np.corrcoef(on_ants, on_fixed)[0, 1] > 0.99 and np.abs(on_ants - on_fixed).mean() < 6.0
    flip = np.diag([-1.0, -1.0, 1.0][:ndim])  # LPS <-> RAS
    as_ras = AffineTransform(flip @ t.matrix @ flip, flip @ t.translation_mm)
    for wrong in (AffineTransform.identity(ndim), t.inverse(), as_ras):
        off = by_ants(wrong).array[inside]  # measured: correlation 0.36-0.77, differences 30-73
        assert np.corrcoef(off, on_sitk)[0, 1] < 0.9 and np.abs(off - on_sitk).mean() > 20.0
