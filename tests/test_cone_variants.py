"""Cone variants of the benchmark: known negatives (the MRI holds no rigid answer), a cone of another head."""

import numpy as np
import pytest
import torch

from crossreg import datasets
from crossreg.evaluate.cases import BENCH_KINDS, synthetic_cases
from crossreg.evaluate.cone_variants import CONE_VARIANTS, ELSEWHERE_MARGIN_MM, mirror
from crossreg.resample import resample


@pytest.fixture(scope="module")
def t1():
    return datasets.mni152_t1(2)


def variant(kind: str):
    (case,) = synthetic_cases((kind,), 1, seed=0)
    assert (
        case.kind == kind
        and case.negative == CONE_VARIANTS[kind].negative
        and case.name.startswith(f"3d-00-{kind}-us-")
    )
    assert case.moving.grid.contains(case.landmarks_moving_mm, margin_vox=0.5).all()
    assert np.allclose(case.true_transform.apply(case.landmarks_fixed_mm), case.landmarks_moving_mm, atol=0.1)
    return case


def test_cone_variants_are_bench_kinds_and_two_are_negatives():
    assert set(CONE_VARIANTS) == {"us-mirror", "us-elsewhere", "us-other"} <= set(BENCH_KINDS)
    assert {k for k, v in CONE_VARIANTS.items() if v.negative} == {"us-mirror", "us-elsewhere"}
    assert not synthetic_cases(("us",), 1, seed=0)[0].negative


def test_mirror_case_is_the_flipped_mri_with_a_reflection_for_truth(t1):
    case = variant("us-mirror")
    # MNI152 stores world x (left-right) along the array's last axis.
    assert np.array_equal(case.fixed.array, np.flip(t1.array, 2))
    assert np.array_equal(case.fixed.grid.index_to_world_matrix(), t1.grid.index_to_world_matrix())
    assert np.linalg.det(case.true_transform.matrix) < 0  # a reflection: no rigid map is right
    # The reflection takes each voxel's centre to the one its value moved to.
    flip = mirror(t1, 2)
    index_xyz = np.array([[3.0, 10.0, 20.0], [40.0, 50.0, 60.0]])
    moved = t1.grid.world_to_index(flip.apply(t1.grid.index_to_world(index_xyz)))
    assert np.allclose(moved, [[73.0, 10.0, 20.0], [36.0, 50.0, 60.0]])  # x -> 76 - x
    assert abs(flip.apply(np.zeros((1, 3)))[0, 0] - 2 * t1.grid.center_mm()[0]) < 1e-9


def test_elsewhere_case_keeps_no_mri_where_the_cone_looks(t1):
    case = variant("us-elsewhere")
    # The cone, carried back onto the fixed grid by the truth: no valid fixed voxel under it ...
    cone = resample(case.moving, case.fixed.grid, case.true_transform).mask
    valid = case.fixed.valid_mask()
    assert cone.sum() > 500 and not (cone & valid).any()
    # ... nor within the margin of it (a kept voxel that near lies in the cone's box grown by it).
    kept = case.fixed.grid.index_to_world(np.argwhere(valid)[:, ::-1].astype(float))
    seen = case.fixed.grid.index_to_world(np.argwhere(cone)[:, ::-1].astype(float))
    near = kept[
        ((kept > seen.min(0) - ELSEWHERE_MARGIN_MM) & (kept < seen.max(0) + ELSEWHERE_MARGIN_MM)).all(1)
    ]
    gap = torch.cdist(torch.from_numpy(near), torch.from_numpy(seen)).min() if len(near) else np.inf
    assert gap > ELSEWHERE_MARGIN_MM - 2.0  # one voxel of the cone's blurred edge
    # What is kept is the MRI itself, and a good share of the head.
    assert np.array_equal(case.fixed.array[valid], t1.array[valid]) and (case.fixed.array[~valid] == 0).all()
    assert valid.mean() > 0.2


def test_other_case_is_a_cone_of_another_head(t1):
    case = variant("us-other")
    assert np.array_equal(case.fixed.array, t1.array)
    # The same draw on the template itself gives another cone: the anatomy differs.
    (own,) = synthetic_cases(("us",), 1, seed=0)
    assert case.moving.array.shape != own.moving.array.shape or not np.allclose(
        case.moving.array, own.moving.array
    )
    # Its truth is no rigid map: the subject's deformation moves the template by millimetres.
    displacement = np.linalg.norm(case.true_transform.field.array, axis=-1)
    assert displacement.max() > 3.0
    with pytest.raises(ValueError, match="3D"):
        synthetic_cases(("us-other",), 1, ndim=2)
