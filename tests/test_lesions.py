"""Synthetic lesions: placement, growth, mass effect, exact maps between baseline and follow-up."""

import csv

import numpy as np
import pytest
import torch

from crossreg import datasets as data
from crossreg.errors import InvalidConfigError
from crossreg.resample import sample_world
from crossreg.synth.diffeo import SmoothFieldConfig, affine_points
from crossreg.synth.labels import CLASSES, head_labels
from crossreg.synth.lesions import (
    LESION_CLASSES,
    FollowupConfig,
    LesionConfig,
    make_longitudinal,
    mass_effect,
)
from crossreg.synth.subjects import SubjectConfig

ALL = CLASSES + LESION_CLASSES


@pytest.fixture(scope="module")
def template():
    return data.mni152_t1(2)


@pytest.fixture(scope="module")
def labels(template):
    return head_labels(template, data.mni152_tissues(2))


@pytest.fixture(scope="module")
def longi(template, labels):
    """A T1 baseline and a T2 follow-up, 6 lesions (seed 1: two grow by 1.5x, one shrinks to 0.54x)."""
    return make_longitudinal(template, labels, SubjectConfig(contrast="t1"), FollowupConfig(contrast="t2"), 1)


@pytest.fixture(scope="module")
def radial(template, labels):
    """The same pair with concentric growth and no longitudinal change: only pushes and the motion."""
    config = FollowupConfig(
        contrast="t2",
        lesions=LesionConfig(shift_mm=(0.0, 0.0)),
        change=SmoothFieldConfig(max_displacement_mm=(0.0, 0.0)),
    )
    return make_longitudinal(template, labels, SubjectConfig(contrast="t1"), config, 1)


def at(image, points_mm):
    """Linear interpolation of ``image`` at world points ``(N, 3)``: ``(N,)``."""
    values = torch.from_numpy(image.array)[None].double()
    return sample_world(values, image.grid, torch.from_numpy(np.asarray(points_mm, float))).numpy()[0]


def directions(n, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def head_points(image, tissues, n, seed=0):
    """``n`` random world points ``(n, 3)`` at voxel centres of ``image`` inside the head."""
    idx = np.argwhere(tissues["background"].array < 0.5)
    chosen = idx[np.random.default_rng(seed).choice(len(idx), n, replace=False)]
    return image.grid.index_to_world(chosen[:, ::-1].astype(float))


def near_lesions(longi, n_each, reach_radii=4.0, seed=0):
    """Random points ``(K * n_each, 3)`` within ``reach_radii`` baseline radii of every lesion centre."""
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            les.centre_mm
            + directions(n_each, seed + k) * rng.uniform(0, reach_radii * les.radius_mm, (n_each, 1))
            for k, les in enumerate(longi.lesions)
        ]
    )


def lesion_probability(tissues, points_mm):
    return sum(at(tissues[k], points_mm) for k in LESION_CLASSES)


def test_lesions_lie_in_brain_tissue_apart_and_in_range(longi, labels):
    lesions = longi.lesions
    assert 3 <= len(lesions) <= 6 and [les.label for les in lesions] == [f"L{k + 1}" for k in range(6)]
    r0 = np.array([les.radius_mm for les in lesions])
    r1 = np.array([les.followup_radius_mm for les in lesions])
    assert np.all((r0 >= 3.0) & (r0 <= 10.0)) and np.all((r1 / r0 >= 0.5) & (r1 / r0 <= 1.8))
    assert (r1 / r0).max() > 1.4 and (r1 / r0).min() < 0.7  # this seed grows some, shrinks others
    centres = np.array([les.centre_mm for les in lesions])
    template_centres = longi.deformation.to_template(centres)
    assert np.all(at(labels["gm"], template_centres) + at(labels["wm"], template_centres) > 0.5 - 1e-3)
    # Each ball, at its larger radius, inside the brain: no point of its surface in air or skull.
    for c, size in zip(centres, np.maximum(r0, r1), strict=True):
        surface = longi.deformation.to_template(c + size * directions(200))
        assert (at(labels["background"], surface) + at(labels["nonbrain"], surface)).max() < 0.5
    sizes = np.maximum(r0, r1)
    apart = np.linalg.norm(centres[:, None] - centres[None], axis=2) - (sizes[:, None] + sizes[None])
    assert apart[np.triu_indices(len(lesions), 1)].min() >= LesionConfig().gap_mm - 1e-9
    moved = np.array([les.followup_centre_mm for les in lesions])
    apart = np.linalg.norm(moved[:, None] - moved[None], axis=2) - (r1[:, None] + r1[None])
    assert apart[np.triu_indices(len(lesions), 1)].min() > 0


def test_painted_lesions_have_the_baseline_and_follow_up_radii(longi):
    for scan, tissues, centre, radius in (
        ("baseline", longi.baseline_tissues, "centre_mm", "radius_mm"),
        ("follow-up", longi.followup_tissues, "followup_centre_mm", "followup_radius_mm"),
    ):
        for les in longi.lesions:
            c, r = getattr(les, centre), getattr(les, radius)
            inside = lesion_probability(tissues, c + 0.6 * r * directions(26))
            outside = lesion_probability(tissues, c + 1.5 * r * directions(26))
            assert lesion_probability(tissues, c[None])[0] > 0.95, (scan, les.label)
            assert np.median(inside) > 0.85 and np.median(outside) < 0.1, (scan, les.label, inside, outside)
    # A rim 15-30 % of the radius thick: 39-66 % of each lesion's volume, partial volume aside.
    rim, whole = (longi.baseline_tissues[k].array.sum() for k in ("rim", "lesion"))
    assert 0.3 < rim / (rim + whole) < 0.75
    # The follow-up image shows a lesion class: the core's intensity differs from the tissue around it.
    for les in longi.lesions:
        c, r = les.followup_centre_mm, les.followup_radius_mm
        core = at(longi.followup, c + 0.3 * r * directions(50))
        around = at(longi.followup, c + 2.0 * r * directions(50))
        assert abs(np.median(core) - np.median(around)) > 0.05, les.label


def test_maps_are_exact_inverses(longi):
    p = np.concatenate([head_points(longi.baseline, longi.baseline_tissues, 2000), near_lesions(longi, 300)])
    assert np.abs(longi.followup_to_baseline(longi.baseline_to_followup(p)) - p).max() < 1e-6
    q = head_points(longi.followup, longi.followup_tissues, 2000, seed=1)
    assert np.abs(longi.baseline_to_followup(longi.followup_to_baseline(q)) - q).max() < 1e-6
    moved = longi.baseline_to_followup(np.array([les.centre_mm for les in longi.lesions]))
    np.testing.assert_allclose(moved, [les.followup_centre_mm for les in longi.lesions], atol=1e-9)
    as_torch = longi.baseline_to_followup(torch.from_numpy(p[:10]).float())
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float32


def class_mismatch(longi, p, q):
    """Mean over points of the summed |baseline class probability at p - follow-up's at q|."""
    return np.mean(
        sum(np.abs(at(longi.baseline_tissues[k], p) - at(longi.followup_tissues[k], q)) for k in ALL)
    )


def test_followup_shows_the_baseline_tissue_at_mapped_points(longi):
    p = head_points(longi.baseline, longi.baseline_tissues, 3000)
    near = near_lesions(longi, 200, reach_radii=2.0)
    right, right_near = (class_mismatch(longi, x, longi.baseline_to_followup(x)) for x in (p, near))
    assert right < 0.15 and right_near < 0.15, (right, right_near)
    # Telling the maps apart: the rigid motion alone misses the mass effect near the lesions, and the
    # baseline points themselves miss the motion everywhere.
    assert class_mismatch(longi, near, longi.motion.apply(near)) > right_near + 0.1
    assert class_mismatch(longi, p, p) > 3 * right
    # The painted follow-up (T2, own look) at the mapped points: what the baseline's classes there predict.
    pure = {k: longi.followup_tissues[k].array > 0.9 for k in ALL}
    medians = {k: np.median(longi.followup.array[pure[k]]) for k in ALL if pure[k].sum() > 20}
    predicted = sum(medians[k] * at(longi.baseline_tissues[k], p) for k in medians)
    shown = at(longi.followup, longi.baseline_to_followup(p))
    unmapped = at(longi.followup, p)
    assert np.corrcoef(predicted, shown)[0, 1] > 0.85
    assert np.corrcoef(predicted, unmapped)[0, 1] < np.corrcoef(predicted, shown)[0, 1] - 0.2


def test_shift_moves_the_lesion_whole_and_fades():
    effect = mass_effect(np.zeros((1, 3)), [5.0], [8.0], [12.0], [[3.0, 0.0, 0.0]], [10.0])
    u = torch.from_numpy(directions(100))
    inside = 5.0 * u  # the baseline boundary: pushed to 8 mm, then moved with the lesion
    torch.testing.assert_close(
        effect.apply(inside), 8.0 * u + torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    )
    far = 30.0 * u  # beyond both reaches (17 and 18 mm): nothing moves
    assert (effect.apply(far) - far).abs().max() == 0.0


def test_mass_effect_pushes_by_the_radius_change_and_fades():
    effect = mass_effect(np.zeros((1, 3)), [5.0], [8.0], [12.0])  # grows 5 -> 8 mm, push fades over 12 mm
    u = torch.from_numpy(directions(100))

    def radius_after(r):
        return effect.apply(r * u).norm(dim=1)

    torch.testing.assert_close(
        radius_after(5.0), torch.full((100,), 8.0, dtype=torch.float64)
    )  # boundary: +3
    torch.testing.assert_close(
        radius_after(2.5), torch.full((100,), 4.0, dtype=torch.float64)
    )  # inside: scaled
    torch.testing.assert_close(
        radius_after(11.0), torch.full((100,), 12.5, dtype=torch.float64)
    )  # half-way: +1.5
    far = 30.0 * u
    assert (effect.apply(far) - far).abs().max() == 0.0  # beyond the reach nothing moves
    r = torch.linspace(5.0, 17.0, 200, dtype=torch.float64)[:, None] * u[:1]
    pushed = effect.apply(r).norm(dim=1) - r.norm(dim=1)
    assert (pushed.diff() <= 1e-12).all() and (pushed >= 0).all()  # outward, fading with distance
    shrink = mass_effect(np.zeros((1, 3)), [6.0], [3.0], [15.0])
    torch.testing.assert_close(
        shrink.apply(6.0 * u).norm(dim=1), torch.full((100,), 3.0, dtype=torch.float64)
    )


def test_mass_effect_in_a_longitudinal_pair(radial):
    def before(q):  # follow-up points back before the motion: the pushed baseline
        return radial.motion.inverse().apply(q)

    for les in radial.lesions:
        if les.followup_radius_mm / les.radius_mm < 1.4:
            continue
        boundary = les.centre_mm + (les.radius_mm + 1e-6) * directions(50)
        centre_after = before(les.followup_centre_mm[None])[0]
        pushed = np.linalg.norm(before(radial.baseline_to_followup(boundary)) - centre_after, axis=1)
        change = les.followup_radius_mm - les.radius_mm
        assert abs(np.median(pushed) - les.radius_mm - change) < 0.05 * change, (les.label, pushed, change)
    # Tissue further than 4 radii from every lesion stays where the motion alone puts it.
    p = head_points(radial.baseline, radial.baseline_tissues, 5000)
    distance = np.stack([np.linalg.norm(p - les.centre_mm, axis=1) / les.radius_mm for les in radial.lesions])
    far, close = p[distance.min(axis=0) > 4.0], p[distance.min(axis=0) < 1.5]
    assert len(far) > 1000 and np.abs(before(radial.baseline_to_followup(far)) - far).max() < 0.3
    assert np.abs(before(radial.baseline_to_followup(close)) - close).max() > 2.0


@pytest.mark.parametrize(
    ("radii", "grown", "reach", "shifts", "shift_reach"),
    [
        # 3x growth at the shortest allowed reach, 2 (3 - 1) radii
        ([5.0, 4.0], [15.0, 2.0], [20.0, 4.0], None, None),
        # reaches overlapping each other
        ([6.0, 8.0, 3.0], [10.0, 12.0, 1.0], [12.0, 16.0, 1.5], None, None),
        # shifted too, each near the folding limit (1.5 |shift| / shift reach 0.9-0.99), overlapping
        (
            [6.0, 8.0, 3.0],
            [10.0, 6.0, 4.0],
            [12.0, 16.0, 4.0],
            [[6, 0, 0], [0, -4, 3], [2, 2, -1]],
            [10, 8, 4.6],
        ),
    ],
)
def test_mass_effect_never_folds(radii, grown, reach, shifts, shift_reach):
    centres = np.array([[0.0, 0.0, 0.0], [18.0, 6.0, 0.0], [-6.0, 16.0, 5.0]])[: len(radii)]
    effect = mass_effect(centres, radii, grown, reach, shifts, shift_reach)
    axes = [torch.arange(-30.0, 50.0, 0.8, dtype=torch.float64)] * 3
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (x, y, z) index order
    jac = torch.stack(torch.gradient(effect.apply(points), spacing=0.8, dim=(0, 1, 2)), dim=-1)
    det = torch.linalg.det(jac)
    assert det.min() > 0 and det.max() > 2  # no folding; growing cores swell by (r1 / r0)^3
    assert (effect.invert(effect.apply(points)) - points).abs().max() < 1e-9


def test_folding_configs_are_refused():
    with pytest.raises(InvalidConfigError, match="fold"):
        LesionConfig(growth=(0.5, 2.5), reach=(2.0, 3.0))
    with pytest.raises(InvalidConfigError, match="fold"):
        LesionConfig(shift_mm=(1.0, 8.0), shift_reach_mm=(12.0, 20.0))
    with pytest.raises(InvalidConfigError):
        LesionConfig(count=(4, 2))
    with pytest.raises(InvalidConfigError):
        FollowupConfig(contrast="pd")


def test_same_seed_same_pair(template, labels, longi):
    again = make_longitudinal(
        template, data.mni152_tissues(2), SubjectConfig(contrast="t1"), FollowupConfig(contrast="t2"), 1
    )
    np.testing.assert_array_equal(again.baseline.array, longi.baseline.array)
    np.testing.assert_array_equal(again.followup.array, longi.followup.array)
    for a, b in zip(again.lesions, longi.lesions, strict=True):
        np.testing.assert_array_equal(a.followup_centre_mm, b.followup_centre_mm)
        assert a.radius_mm == b.radius_mm and a.followup_radius_mm == b.followup_radius_mm


# make_longitudinal(t1, labels, SubjectConfig(contrast="t1"), FollowupConfig(contrast="t2"), seed=1) before
# eccentric growth and the longitudinal change: the `radial` fixture must reproduce it.
RADIAL_TRACKS = [
    [6.483858714375591, 53.82324871642072, -22.689695224338358],
    [18.74134249329436, 20.814865470144184, -5.248344162093357],
    [12.572939963569238, -59.22985016523484, -2.641754612012826],
    [34.08160310048393, 39.61620640416603, 16.343708849283114],
    [4.690386155620573, 16.23660327117389, 67.97467230973922],
    [46.7573454081559, 4.431905394044209, -12.368388531643266],
]


def test_no_shift_and_no_change_give_the_radial_follow_up(radial):
    assert radial.change is None and radial.mass_effect.shifts_mm.abs().max() == 0
    tracks = [les.followup_centre_mm for les in radial.lesions]
    np.testing.assert_allclose(tracks, RADIAL_TRACKS, rtol=0, atol=1e-9)
    image = radial.followup.array.astype(np.float64)
    np.testing.assert_allclose([image.sum(), (image**2).sum()], [139620.70410211937, 41299.01364705847], 1e-7)
    p = near_lesions(radial, 200, reach_radii=6.0)
    np.testing.assert_array_equal(
        radial.baseline_to_followup(p),
        affine_points(radial.mass_effect.apply(torch.from_numpy(p)), radial.motion).numpy(),
    )


def affine_miss(longi, points):
    """Error ``(K,)`` at the lesion centres of the best affine map of ``points`` to their follow-up places."""
    fit = np.linalg.lstsq(
        np.c_[points, np.ones(len(points))], longi.baseline_to_followup(points), rcond=None
    )[0]
    centres = np.array([les.centre_mm for les in longi.lesions])
    truth = np.array([les.followup_centre_mm for les in longi.lesions])
    return np.linalg.norm(np.c_[centres, np.ones(len(centres))] @ fit - truth, axis=1)


def test_lesions_move_off_the_affine_map(longi, radial):
    p = head_points(longi.baseline, longi.baseline_tissues, 20000)
    assert affine_miss(radial, p).mean() < 0.2  # pushes alone: affine transfer is nearly exact
    assert affine_miss(longi, p).mean() > 2.0, affine_miss(longi, p)
    shifts = longi.mass_effect.shifts_mm.norm(dim=1).numpy()
    assert np.all((shifts >= 1.5) & (shifts <= 5.0))
    assert longi.change is not None and 3.0 <= longi.change.forward_mm.norm(dim=0).max() <= 6.0 + 1e-4


def test_followup_lesions_sit_at_their_tracks(longi):
    """The centroid of each lesion's core and rim in the follow-up's class maps is its track."""
    tissues = longi.followup_tissues
    grid = tissues["lesion"].grid
    index = np.argwhere(np.ones(grid.shape, bool))
    points = grid.index_to_world(index[:, ::-1].astype(float))
    weight = (tissues["lesion"].array + tissues["rim"].array).reshape(-1).astype(np.float64)
    for les in longi.lesions:
        near = np.linalg.norm(points - les.followup_centre_mm, axis=1) < 1.5 * les.followup_radius_mm
        centroid = (weight[near, None] * points[near]).sum(axis=0) / weight[near].sum()
        assert np.linalg.norm(centroid - les.followup_centre_mm) < 0.5, (les.label, centroid)


def test_whole_chain_never_folds(longi):
    """det of the Jacobian of baseline_to_followup on 1.5 mm grids about every lesion, out to where its
    push and shift end, and on a 3 mm grid over the head."""
    effect = longi.mass_effect
    for k, les in enumerate(longi.lesions):
        extent = float(
            max(effect.radii_mm[k] + effect.reach_mm[k], effect.grown_mm[k] + effect.shift_reach_mm[k])
        )
        axes = [torch.arange(-extent - 3, extent + 3, 1.5, dtype=torch.float64)] * 3
        box = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) + torch.from_numpy(les.centre_mm)
        det = jacobian_det(longi, box, 1.5)
        assert det.min() > 0.05, (les.label, det.min())
    lo, hi = longi.baseline.grid.corners_mm().min(axis=0), longi.baseline.grid.corners_mm().max(axis=0)
    axes = [torch.arange(a, b, 3.0, dtype=torch.float64) for a, b in zip(lo, hi, strict=True)]
    assert jacobian_det(longi, torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1), 3.0).min() > 0.05


def jacobian_det(longi, points, spacing):
    """det of the Jacobian of ``baseline_to_followup`` by central differences on a grid ``(X, Y, Z, 3)``."""
    mapped = longi.baseline_to_followup(points.reshape(-1, 3)).reshape(points.shape)
    jac = torch.stack(torch.gradient(mapped, spacing=spacing, dim=(0, 1, 2)), dim=-1)
    return torch.linalg.det(jac)


def test_round_trip_through_the_whole_chain(longi):
    rng = np.random.default_rng(5)
    lo, hi = longi.baseline.grid.corners_mm().min(axis=0), longi.baseline.grid.corners_mm().max(axis=0)
    p = np.concatenate([rng.uniform(lo, hi, (5000, 3)), near_lesions(longi, 500, reach_radii=8.0, seed=3)])
    assert np.abs(longi.followup_to_baseline(longi.baseline_to_followup(p)) - p).max() < 1e-4
    q = longi.baseline_to_followup(p)
    assert np.abs(longi.baseline_to_followup(longi.followup_to_baseline(q)) - q).max() < 1e-4


def read_lesions(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r[k]) for k in ("x", "y", "z", "radius")] for r in rows]), [
        r["label"] for r in rows
    ]


def test_synth_longitudinal_writes_the_case_and_refuses_to_overwrite(tmp_path, longi):
    from typer.testing import CliRunner

    from crossreg.cli import app
    from crossreg.imageio import load
    from crossreg.markups import read_landmarks_csv

    out = tmp_path / "longitudinal"
    args = ["synth", "longitudinal", "--out", str(out), "--seed", "1", "--contrast", "t1"]
    result = CliRunner().invoke(app, [*args, "--followup-contrast", "t2"])
    assert result.exit_code == 0, result.output
    # The same seed and contrasts as the fixture: the files hold its scans and its truth.
    baseline, followup = load(out / "baseline.nii.gz"), load(out / "followup.nii.gz")
    np.testing.assert_allclose(baseline.array, longi.baseline.array, atol=1e-6)
    np.testing.assert_allclose(followup.grid.origin_mm, longi.followup.grid.origin_mm, atol=1e-4)
    for name, centre, radius in (
        ("lesions_baseline.csv", "centre_mm", "radius_mm"),
        ("lesions_followup.csv", "followup_centre_mm", "followup_radius_mm"),
    ):
        assert (out / name).read_text().splitlines()[0] == "x,y,z,radius,label"
        values, names = read_lesions(out / name)
        expected = [[*getattr(les, centre), getattr(les, radius)] for les in longi.lesions]
        np.testing.assert_array_equal(values, expected)
        assert names == [les.label for les in longi.lesions]
        np.testing.assert_array_equal(read_landmarks_csv(out / name), values[:, :3])
    stamp = (out / "followup.nii.gz").stat().st_mtime_ns
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert (out / "followup.nii.gz").stat().st_mtime_ns == stamp


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_same_pair(template, labels, longi):
    config = (SubjectConfig(contrast="t1"), FollowupConfig(contrast="t2"))
    gpu = make_longitudinal(template, labels, *config, seed=1, device="cuda")
    for a, b in zip(gpu.lesions, longi.lesions, strict=True):
        np.testing.assert_allclose(a.followup_centre_mm, b.followup_centre_mm, atol=1e-3)
    assert np.corrcoef(gpu.followup.array.ravel(), longi.followup.array.ravel())[0, 1] > 0.99
