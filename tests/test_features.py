"""FEATURES: every kind describes an image once and reads unit descriptors anywhere; a new kind is
one class and one registry entry, and the whole pipeline runs on it."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossreg import datasets
from crossreg.config import RegisterConfig
from crossreg.evaluate.metrics import tre_mm
from crossreg.features import FEATURES, Description, make_features
from crossreg.features.mind import layout_offsets_mm
from crossreg.image import Image
from crossreg.register import register
from crossreg.resample import sample_world, working_image
from crossreg.synth.cases import make_case


@dataclass(frozen=True)
class PatchFeatures:
    """Raw intensity on MIND-SSC's layout around each point: a same-modality descriptor."""

    dense_by_default: ClassVar[bool] = False

    def describe(self, image: Image) -> Description:
        values = torch.from_numpy(image.array).double()[None]
        offsets = layout_offsets_mm(image.ndim)

        def at(points_mm: torch.Tensor) -> torch.Tensor:
            where = points_mm.double().cpu()[:, None, :] + offsets[None]
            patch = sample_world(values, image.grid, where)[0]
            return F.normalize(patch - patch.mean(dim=1, keepdim=True), dim=1).float()

        return Description(image, at)


@pytest.mark.parametrize("kind", sorted(FEATURES))
def test_every_kind_reads_unit_descriptors_that_tell_points_apart(kind):
    features = make_features(RegisterConfig(features=kind), 3)
    work = working_image(datasets.mni152_t1(2), 2.0)
    description = features.describe(work)
    centre = torch.from_numpy(work.grid.center_mm()).float()
    points = centre + torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [20.0, 0.0, 0.0], [0.0, -30.0, 10.0]])
    desc = description.at(points)
    assert desc.dtype == torch.float32 and desc.shape[0] == 4
    np.testing.assert_allclose(desc.norm(dim=1).numpy(), 1.0, atol=1e-4)
    assert torch.allclose(desc[0], desc[1]) and not torch.allclose(desc[0], desc[2], atol=1e-2)
    assert (description.rerank_at is not None) == (kind == "crosskey")


def test_a_new_kind_is_one_class_and_one_registry_entry(monkeypatch):
    monkeypatch.setitem(FEATURES, "patch", lambda config, ndim: PatchFeatures())
    case = make_case(datasets.mni152_slice(1, "axial"), "same", 15.0, 15.0, fov_fraction=0.7, seed=1)
    result = register(case.fixed, case.moving, RegisterConfig(features="patch", refine=None))
    errors = tre_mm(result.transform, case.true_transform, case.landmarks_fixed_mm)
    assert errors.mean() < 1.0 and result.confidence > 0.9
