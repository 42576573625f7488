"""Synthetic subjects: template classes, diffeomorphic families, exact maps both ways, contrasts, seeds."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from crossreg import datasets as data
from crossreg.errors import InvalidConfigError
from crossreg.resample import grid_points_mm, sample_world
from crossreg.synth.diffeo import AffineConfig, AtrophyConfig, DeformationConfig, SmoothFieldConfig
from crossreg.synth.labels import CLASSES, LabelConfig, head_labels
from crossreg.synth.subjects import FAMILIES, AppearanceConfig, SubjectConfig, make_subject

# Documented largest displacement inside the head per family, mm (diffeo.py module notes).
RANGES_MM = {"global": (8.0, 12.0), "regional": (4.0, 6.0), "atrophy": (2.0, 5.5)}


@pytest.fixture(scope="module")
def template():
    return data.mni152_t1(2)


@pytest.fixture(scope="module")
def labels(template):
    return head_labels(template, data.mni152_tissues(2))


@pytest.fixture(scope="module")
def subjects(template, labels):
    """One T1-contrast subject per family (seeds 1, 2, 3)."""
    return {
        f: make_subject(template, labels, SubjectConfig(contrast="t1", families=(f,)), seed=i + 1)
        for i, f in enumerate(FAMILIES)
    }


def at(image, points_mm):
    """Linear interpolation of ``image`` at world points ``(N, 3)``: ``(N,)``."""
    values = torch.from_numpy(image.array)[None].double()
    return sample_world(values, image.grid, torch.from_numpy(points_mm)).numpy()[0]


def points_where(image, mask, n, seed=0):
    """``n`` random world points ``(n, 3)`` at voxel centres of ``image`` where ``mask`` holds."""
    idx = np.argwhere(mask)
    chosen = idx[np.random.default_rng(seed).choice(len(idx), n, replace=False)]
    return image.grid.index_to_world(chosen[:, ::-1].astype(float))


def test_template_classes_sum_to_one_and_lie_where_expected(template, labels):
    total = sum(labels[k].array for k in CLASSES)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    pure = {k: labels[k].array > 0.9 for k in CLASSES}
    assert all(pure[k].sum() > 2000 for k in CLASSES), {k: int(v.sum()) for k, v in pure.items()}
    assert labels["background"].array[0, 0, 0] == 1.0  # the padded grid's corner is air
    t1 = template.array  # on the unpadded grid: cut the padding off the labels
    n = round(LabelConfig().pad_mm / 2.0)
    inner = {k: v[n:-n, n:-n, n:-n] for k, v in pure.items()}
    # CSF is where the T1 is dark (ventricles, sulci), GM mid, WM bright; the skull shell lies
    # outside the skull-stripped T1's signal.
    median = {k: np.median(t1[inner[k]]) for k in ("csf", "gm", "wm")}
    assert median["csf"] < 0.3 * median["gm"] and median["gm"] < median["wm"], median
    assert np.percentile(t1[inner["nonbrain"]], 99) < 5.0
    tissue = labels["gm"].array + labels["wm"].array > 0.5
    assert labels["nonbrain"].array[tissue].max() == 0.0  # no skull inside the brain


def test_subject_classes_sum_to_one_on_the_image_grid(subjects):
    for s in subjects.values():
        assert all(m.grid is s.image.grid for m in s.tissues.values())
        np.testing.assert_allclose(sum(m.array for m in s.tissues.values()), 1.0, atol=1e-5)
        assert all((s.tissues[k].array > 0.9).sum() > 1000 for k in CLASSES)


@pytest.mark.parametrize("family", FAMILIES)
def test_deformations_never_fold(subjects, family):
    s = subjects[family]
    det = s.deformation.jacobian_determinant()
    assert det.min() > 0.05, f"{family}: min det {det.min():.3f} on the field grid"
    # Independently of the field: finite differences of the map itself at subject head points.
    head = s.tissues["background"].array < 0.5
    x = points_where(s.image, head, 3000)
    h = 0.5
    cols = [(s.to_template(x + h * e) - s.to_template(x - h * e)) / (2 * h) for e in np.eye(3)]
    det_points = np.linalg.det(np.stack(cols, axis=-1))
    assert det_points.min() > 0.05, f"{family}: min det {det_points.min():.3f} at head points"


@pytest.mark.parametrize("family", FAMILIES)
def test_maps_are_inverse_of_each_other(labels, subjects, family):
    s = subjects[family]
    y = points_where(labels["csf"], labels["background"].array < 0.5, 2000)
    err_template = np.linalg.norm(s.to_template(s.to_subject(y)) - y, axis=1).max()
    x = points_where(s.image, s.tissues["background"].array < 0.5, 2000, seed=1)
    err_subject = np.linalg.norm(s.to_subject(s.to_template(x)) - x, axis=1).max()
    assert max(err_template, err_subject) < 0.1, (err_template, err_subject)
    # Scaling and squaring of -v alone already inverts exp(v) closely (the iterations only polish).
    d = s.deformation
    z = torch.from_numpy(y)
    back = d._phi(d._phi(z, d.inverse_mm), d.forward_mm)
    assert (back - z).norm(dim=1).max() < 0.5


@pytest.mark.parametrize("family", FAMILIES)
def test_template_landmarks_land_on_the_same_tissue(labels, subjects, family):
    s = subjects[family]
    wm = points_where(labels["wm"], labels["wm"].array > 0.95, 500)
    landed = at(s.tissues["wm"], s.to_subject(wm)).mean()
    assert landed > 0.8, f"{family}: mean WM probability {landed:.2f} at mapped WM landmarks"
    # The statistic tells directions apart: the other map puts the landmarks off the white matter.
    wrong = at(s.tissues["wm"], s.to_template(wm)).mean()
    assert wrong < landed - 0.15, (landed, wrong)


def boundary_mismatch(subject, labels, mapping):
    """Mean |subject WM probability at ``mapping(y)`` - template's at ``y``| over WM boundary points."""
    y = points_where(labels["wm"], (labels["wm"].array > 0.2) & (labels["wm"].array < 0.8), 1000)
    return np.abs(at(subject.tissues["wm"], mapping(y)) - at(labels["wm"], y)).mean()


@pytest.mark.parametrize("family", FAMILIES)
def test_subject_tissues_are_the_template_tissues_at_mapped_points(labels, subjects, family):
    s = subjects[family]
    right = boundary_mismatch(s, labels, s.to_subject)  # interpolation error only
    assert right < 0.07
    assert boundary_mismatch(s, labels, s.to_template) > 3 * right


def test_nonlinear_part_alone_points_the_right_way(template, labels):
    # No affine: only the diffeomorphism tells to_subject from to_template apart.
    deformation = DeformationConfig(affine=AffineConfig(0.0, 0.0, 0.0, 0.0))
    config = SubjectConfig(families=("global",), deformation=deformation)
    s = make_subject(template, labels, config, seed=2)
    right = boundary_mismatch(s, labels, s.to_subject)
    assert right < 0.07
    assert boundary_mismatch(s, labels, s.to_template) > 3 * right


@pytest.mark.parametrize("family", FAMILIES)
def test_displacements_within_documented_ranges(labels, subjects, family):
    d = subjects[family].deformation
    # Not 1 - background: sampling is zero outside the labels' grid, and that is air too.
    inside = torch.from_numpy(sum(labels[k].array for k in CLASSES[1:]))[None].float()
    head = sample_world(inside, labels["csf"].grid, grid_points_mm(d.grid))[0] > 0.5
    largest = float(d.forward_mm.norm(dim=0)[head].max())
    lo, hi = RANGES_MM[family]
    assert 0.8 * lo <= largest <= hi, f"{family}: largest displacement {largest:.2f} mm"


def test_different_seeds_differ_in_shape_not_only_in_pose(template, labels, subjects):
    other = make_subject(template, labels, SubjectConfig(contrast="t1", families=("global",)), seed=11)
    y = points_where(labels["csf"], labels["background"].array < 0.5, 2000)
    a, b = subjects["global"].to_subject(y), other.to_subject(y)
    # What no affine map explains between the two subjects' versions of the same template points.
    fit, *_ = np.linalg.lstsq(np.c_[a, np.ones(len(a))], b, rcond=None)
    residual = np.linalg.norm(np.c_[a, np.ones(len(a))] @ fit - b, axis=1)
    assert np.sqrt((residual**2).mean()) > 1.5


def pure_medians(subject):
    return {k: np.median(subject.image.array[subject.tissues[k].array > 0.9]) for k in ("csf", "gm", "wm")}


def test_contrasts_order_the_tissues(template, labels, subjects):
    t1 = pure_medians(subjects["global"])
    assert t1["wm"] > t1["gm"] > t1["csf"], t1
    t2_subject = make_subject(template, labels, SubjectConfig(contrast="t2", families=("regional",)), seed=5)
    t2 = pure_medians(t2_subject)
    assert t2["wm"] < t2["gm"] < t2["csf"], t2


def test_same_seed_same_subject_from_the_maps_alone(template, subjects):
    # From the GM/WM maps (classes derived on the way) rather than the classes: nothing changes.
    config = SubjectConfig(contrast="t1", families=("atrophy",))
    again = make_subject(template, data.mni152_tissues(2), config, seed=3)
    first = subjects["atrophy"]
    np.testing.assert_array_equal(again.image.array, first.image.array)
    assert all(np.array_equal(again.tissues[k].array, first.tissues[k].array) for k in CLASSES)
    y = np.array([[0.0, -20.0, 10.0], [30.0, 5.0, 40.0]])
    np.testing.assert_array_equal(again.to_subject(y), first.to_subject(y))
    assert again.family == first.family == "atrophy" and again.seed == 3


def test_points_keep_their_type(subjects):
    s = subjects["regional"]
    y = np.array([[0.0, -20.0, 10.0], [30.0, 5.0, 40.0]])
    as_torch = s.to_subject(torch.from_numpy(y).float())
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float32
    np.testing.assert_allclose(as_torch.numpy(), s.to_subject(y), atol=1e-3)


def test_thick_slices_regrid_and_field_of_view(template, labels):
    app = AppearanceConfig(slice_mm=(5.0, 5.0), regrid=True, fov_fraction=(0.5, 0.5))
    s = make_subject(template, labels, SubjectConfig(families=("regional",), appearance=app), seed=6)
    assert sorted(s.image.spacing_mm) == [2.0, 2.0, 5.0]
    assert all(m.grid is s.image.grid for m in s.tissues.values())
    head = s.tissues["background"].array < 0.5
    kept = (s.image.valid_mask() & head).sum() / head.sum()
    assert 0.35 < kept < 0.65


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_gives_the_cpu_subject(template, labels, subjects):
    on_gpu = make_subject(
        template, labels, SubjectConfig(contrast="t1", families=("global",)), seed=1, device="cuda"
    )
    on_cpu = subjects["global"]
    assert on_gpu.image.grid.shape == on_cpu.image.grid.shape
    assert np.abs(on_gpu.image.array - on_cpu.image.array).max() < 1e-3
    y = np.array([[0.0, -20.0, 10.0], [30.0, 5.0, 40.0]])
    np.testing.assert_allclose(on_gpu.to_subject(y), on_cpu.to_subject(y), atol=1e-3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SubjectConfig(contrast="pd"),
        lambda: SubjectConfig(families=()),
        lambda: SubjectConfig(families=("twist",)),
        lambda: SmoothFieldConfig(max_displacement_mm=(6.0, 4.0)),
        lambda: AtrophyConfig(ventricle_mm=(-1.0, 2.0)),
        lambda: AffineConfig(max_scale=0.5),
        lambda: DeformationConfig(steps=2),
        lambda: AppearanceConfig(fov_fraction=(0.0, 1.0)),
        lambda: LabelConfig(shell_mm=20.0, pad_mm=16.0),
    ],
)
def test_bad_settings_are_refused(make):
    with pytest.raises(InvalidConfigError):
        make()


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        SubjectConfig().contrast = "t2"  # type: ignore[misc]
    assert replace(SubjectConfig(), contrast="ct").contrast == "ct"
