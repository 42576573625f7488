"""Variants of the MRI -> ultrasound cone cases: known negatives, and cones of another head.

Each is a cone of kind ``us`` (:func:`crossreg.synth.cases.make_case`) drawn as the benchmark draws
it, then changed. The known negatives' MRI no longer holds the cone's anatomy where a rigid map could
find it, so the right output is a refusal and any transform is a wrong answer (``BenchCase.negative``;
:mod:`crossreg.evaluate.scoring`); their truth and landmarks still say where the cone's tissue is, so
a wrong answer's TRE tells how far it went:

- ``us-mirror``: the fixed MRI flipped left-right (the array along the index axis nearest world x,
  on the same grid), as a header with a flipped axis shows it; the true map is a reflection.
- ``us-elsewhere``: the fixed MRI without the cone's tissue: zero and outside its mask beyond a plane
  :data:`ELSEWHERE_MARGIN_MM` short of the cone, across the direction from the head's middle to the
  cone's; the landmarks lie in the removed part.
The other variant has a right answer, scored by TRE as any case:

- ``us-other``: the cone scanned in another head, a synthetic subject of the template
  (:func:`crossreg.synth.subjects.make_subject`, T1 contrast, skull-stripped as the template is),
  against the template's MRI. Its truth is the subject's deformation then the rigid motion: a rigid
  answer lands on the homologous anatomy, within the subject's deformation of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from crossreg.deformation import DeformableTransform
from crossreg.image import Image, fov_mask
from crossreg.resample import grid_points_mm
from crossreg.synth.cases import Case
from crossreg.synth.geometry import Slab, apply_slab
from crossreg.synth.subjects import SubjectConfig, make_subject
from crossreg.transform import AffineTransform, compose

#: ``us-elsewhere`` keeps no voxel nearer the cone than this, mm, along the cut's normal: the cone's
#: descriptors and their neighbourhoods see nothing of what is left.
ELSEWHERE_MARGIN_MM = 20.0
#: The subjects of ``us-other``.
OTHER_SUBJECT = SubjectConfig(contrast="t1")

#: Makes the ``us`` case of an MRI, called as ``build(mri, tissues=maps)``: the benchmark's draw
#: (motion, spacing, seed) for this case.
Build = Callable[..., Case]


def mirrored(build: Build, image: Image, tissues: dict[str, Image], seed: int) -> Case:
    """A cone of ``image`` against ``image`` flipped left-right; the truth is a reflection."""
    case = build(image, tissues=tissues)
    axis = image.ndim - 1 - int(np.argmax(np.abs(image.direction[0])))  # array axis nearest world x
    mask = None if image.mask is None else np.flip(image.mask, axis).copy()
    fixed = image.with_array(np.flip(image.array, axis).copy(), mask)
    flip = mirror(image, axis)
    return replace(
        case,
        fixed=fixed,
        true_transform=compose(flip, case.true_transform),
        landmarks_fixed_mm=flip.apply(case.landmarks_fixed_mm),
    )


def mirror(image: Image, axis: int) -> AffineTransform:
    """The world reflection ``image``'s grid makes by flipping its array along ``axis``: a voxel's
    centre to the centre of the voxel it lands on."""
    j = image.ndim - 1 - axis  # the same axis in (x, y, z) index order
    flip = np.eye(image.ndim + 1)
    flip[j, j], flip[j, -1] = -1.0, image.grid.shape[axis] - 1
    to_world = image.grid.index_to_world_matrix()
    return AffineTransform.from_homogeneous(to_world @ flip @ np.linalg.inv(to_world), "affine")


def elsewhere(build: Build, image: Image, tissues: dict[str, Image], seed: int) -> Case:
    """A cone of ``image`` against ``image`` cut to the part away from the cone (module docstring)."""
    case = build(image, tissues=tissues)
    cone = case.modality
    cone_mm = cone.grid.index_to_world(np.argwhere(cone.valid_mask())[:, ::-1].astype(float))
    head_mm = image.grid.index_to_world(np.argwhere(fov_mask(image))[:, ::-1].astype(float))
    towards = cone_mm.mean(axis=0) - head_mm.mean(axis=0)
    normal = towards / np.linalg.norm(towards)
    kept = Slab(normal, -np.inf, float((cone_mm @ normal).min()) - ELSEWHERE_MARGIN_MM)
    return replace(case, fixed=apply_slab(image, kept))


def other_subject(build: Build, image: Image, tissues: dict[str, Image], seed: int) -> Case:
    """A cone of a synthetic subject of ``image`` (3D) against ``image`` (module docstring)."""
    if image.ndim != 3:
        raise ValueError("us-other makes synthetic subjects, which are 3D: use ndim=3")
    subject = make_subject(image, tissues, OTHER_SUBJECT, seed)
    brain = sum(subject.tissues[k].array for k in ("csf", "gm", "wm"))
    stripped = subject.image.with_array(subject.image.array * brain)
    case = build(stripped, tissues={k: subject.tissues[k] for k in ("gm", "wm")})
    points = grid_points_mm(image.grid, dtype=torch.float64).reshape(-1, 3).numpy()
    shift = (subject.to_subject(points) - points).reshape(*image.grid.shape, 3)
    return replace(
        case,
        fixed=image,
        true_transform=DeformableTransform(case.true_transform, Image(shift.astype(np.float32), image.grid)),
        landmarks_fixed_mm=subject.to_template(case.landmarks_fixed_mm),
    )


@dataclass(frozen=True)
class ConeVariant:
    """A benchmark kind that turns the ``us`` draw into a case by ``make``; ``negative``: no transform
    is right (a known negative)."""

    make: Callable[[Build, Image, dict[str, Image], int], Case]
    negative: bool


#: Every cone variant of the benchmark.
CONE_VARIANTS: dict[str, ConeVariant] = {
    "us-mirror": ConeVariant(mirrored, negative=True),
    "us-elsewhere": ConeVariant(elsewhere, negative=True),
    "us-other": ConeVariant(other_subject, negative=False),
}
