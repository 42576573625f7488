"""Filters: the separable box dilation and erosion equal the full box."""

import pytest
import torch
import torch.nn.functional as F

from crossreg.filters import dilate, erode


@pytest.mark.parametrize(
    ("shape", "radius"), [((17, 23), 1), ((17, 23), 4), ((15, 18, 16), 2), ((15, 18, 16), 3)]
)
def test_separable_dilation_and_erosion_equal_the_full_box(shape, radius):
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(radius))
    pool = F.max_pool3d if len(shape) == 3 else F.max_pool2d
    sparse = noise > 0.98  # a few seeds: the dilation neither empty nor full
    full = pool(sparse[None, None].float(), 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0.5
    assert torch.equal(dilate(sparse, radius), full)
    assert 0 < full.sum() < full.numel()
    mask = noise > 0.004  # a few holes: the erosion neither empty nor full
    padded = F.pad((~mask)[None, None].float(), [radius] * (2 * len(shape)), value=1.0)
    grown = pool(padded, 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0.5
    eroded = ~grown[(slice(radius, -radius),) * len(shape)]
    assert torch.equal(erode(mask, radius), eroded)
    assert 0 < eroded.sum() < eroded.numel()
