"""Deformable bench methods: the baselines' fields, composed after the rigid start, map fixed points to
moving points (the direction a mix-up would get wrong), and the folding score of a transform."""

from __future__ import annotations

import numpy as np
import pytest

from crossreg.deformation import DeformableTransform
from crossreg.evaluate import from_rigid
from crossreg.evaluate.baselines import MethodOutput
from crossreg.evaluate.cases import synthetic_cases
from crossreg.evaluate.metrics import folded_share
from crossreg.transform import AffineTransform


@pytest.fixture(scope="module")
def shift_case():
    """A 2D T2 slice after a soft tissue shift of a few mm and a rigid motion."""
    return synthetic_cases(("t2-shift",), 1, seed=104, ndim=2)[0]


def _tre(case, transform) -> float:
    return float(
        np.linalg.norm(transform.apply(case.landmarks_fixed_mm) - case.landmarks_moving_mm, axis=1).mean()
    )


def _from_true_rigid(monkeypatch, case, name, field_fn):
    """The method ``field_fn`` after the case's true rigid motion (in place of crossreg's rigid)."""
    start = MethodOutput(case.true_transform.linear, 0.0)
    monkeypatch.setattr(from_rigid, "rigid_start", lambda *args: start)
    method = from_rigid.from_rigid(name, field_fn, (), None)
    return method.run(case.fixed, case.moving, 0)


def test_elastix_field_maps_fixed_points_to_moving_points(monkeypatch, shift_case):
    itk = pytest.importorskip("itk")
    if not hasattr(itk, "elastix_registration_method"):
        pytest.skip("itk-elastix is not installed")
    rigid_only = _tre(shift_case, shift_case.true_transform.linear)
    assert rigid_only > 1.5  # the shift leaves something to find
    out = _from_true_rigid(monkeypatch, shift_case, "elastix", from_rigid.elastix_bspline_field)
    assert out.failed is None and isinstance(out.transform, DeformableTransform)
    assert _tre(shift_case, out.transform) < 0.9 * rigid_only
    # The field with its sign flipped (a direction mix-up) moves the landmarks away.
    flipped = out.transform.field.with_array(-out.transform.field.array)
    assert _tre(shift_case, DeformableTransform(out.transform.linear, flipped)) > rigid_only


def test_ants_field_is_what_ants_maps_fixed_points_to(monkeypatch, shift_case):
    """SyN's composed field moves fixed points as ANTs' own ``apply_transforms_to_points`` with the
    forward transforms does (fixed -> moving, as ``apply_transforms`` resamples the moving image)."""
    ants = pytest.importorskip("ants")
    pd = pytest.importorskip("pandas")
    points = shift_case.landmarks_fixed_mm
    seen = {}
    register = ants.registration

    def registration(**kwargs):
        out = register(**kwargs)  # its files live as long as the method's temporary folder: read now
        table = pd.DataFrame(points, columns=["x", "y"])
        seen["moved"] = ants.apply_transforms_to_points(2, table, out["fwdtransforms"]).values
        return out

    monkeypatch.setattr(ants, "registration", registration)
    out = _from_true_rigid(monkeypatch, shift_case, "ants", from_rigid.ants_syn_field)
    moved = seen["moved"]
    expected = shift_case.true_transform.linear.apply(moved)
    assert np.abs(out.transform.apply(points) - expected).max() < 0.05
    assert np.abs(moved - points).max() > 1.0  # SyN did move them


def test_folded_share_counts_a_fold_and_not_a_rotation(shift_case):
    fixed = shift_case.fixed
    assert folded_share(AffineTransform.identity(2), fixed) == 0.0
    assert folded_share(shift_case.true_transform, fixed) == 0.0  # a diffeomorphism
    field = shift_case.true_transform.field
    noise = np.random.default_rng(0).normal(0.0, 3.0, field.array.shape).astype(np.float32)
    folding = field.with_array(noise)  # 3 mm jumps between 2 mm voxels
    share = folded_share(DeformableTransform(shift_case.true_transform.linear, folding), fixed)
    assert 0.0 < share < 1.0


def test_deformable_methods_share_one_rigid_run_and_stay_out_of_the_defaults(monkeypatch, shift_case):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from crossreg.cli import app
    from crossreg.evaluate.baselines import default_methods

    methods = from_rigid.deformable_methods()
    names = [m.name for m in methods]
    assert names == [
        "crossreg-rigid",
        "crossreg-deformable",
        "ants-syn-from-rigid",
        "elastix-bspline-from-rigid",
    ]
    assert all(m.ndims == (3,) for m in methods)
    assert not set(names) & {m.name for m in default_methods()}
    listed = CliRunner().invoke(app, ["bench", "--list-methods"]).output
    assert all(name in listed for name in names)

    calls = []
    linear = shift_case.true_transform.linear
    found = SimpleNamespace(
        transform=linear, fixed_points_mm=np.ones((5, 2)), moving_points_mm=np.zeros((5, 2))
    )
    registrator = SimpleNamespace(register=lambda *args, seed: calls.append(seed) or found)
    monkeypatch.setattr(from_rigid, "warm_registrator", lambda config: registrator)
    field = DeformableTransform(linear, shift_case.true_transform.field)
    stage = SimpleNamespace(transform=field, seconds=1.0)
    handed = {}
    monkeypatch.setattr(from_rigid, "deform", lambda *args, **kwargs: handed.update(kwargs) or stage)
    rigid, deformable = methods[0], methods[1]
    assert rigid.run(shift_case.fixed, shift_case.moving, 7).transform is linear
    assert deformable.run(shift_case.fixed, shift_case.moving, 7).transform is field
    assert calls == [7]  # the deformable method reused the rigid run
    assert handed["matches"][0] is found.fixed_points_mm  # ... and handed its matches to the field
    deformable.run(shift_case.fixed, shift_case.moving, 8)  # another seed: another rigid run
    assert calls == [7, 8]


def test_rigid_start_tries_its_configurations_in_order(monkeypatch, shift_case):
    """A refusal of the first rigid configuration hands the pair to the next; the first that registers
    it gives the start."""
    from types import SimpleNamespace

    from crossreg.errors import RegistrationFailed

    tried = []
    found = SimpleNamespace(
        transform=shift_case.true_transform.linear,
        fixed_points_mm=np.zeros((0, 2)),
        moving_points_mm=np.zeros((0, 2)),
    )

    def warm_registrator(config):
        def register(fixed, moving, seed):
            tried.append(config.features)
            if config.features == "mind":
                raise RegistrationFailed("too few inliers")
            return found

        return SimpleNamespace(register=register)

    monkeypatch.setattr(from_rigid, "warm_registrator", warm_registrator)
    start = from_rigid.rigid_configs(("mind", "crosskey", "mind"))
    out = from_rigid.rigid_start(shift_case.fixed, shift_case.moving, 3, start)
    assert out.transform is found.transform and tried == ["mind", "crosskey"]
    only_mind = from_rigid.rigid_start(shift_case.fixed, shift_case.moving, 3, start[:1])
    assert only_mind.transform is None and "too few inliers" in only_mind.failed
