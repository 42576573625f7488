"""CrossKEY descriptor network: shapes, world-point lookup, weights files and their failures."""

import numpy as np
import pytest
import torch

from crossreg import datasets
from crossreg.config import RegisterConfig
from crossreg.errors import CrossregError
from crossreg.features.crosskey import (
    CrossKeyConfig,
    CrossKeyFeatures,
    DescriptorNet,
    ModelLoadError,
    load_model,
    save_model,
)
from crossreg.register import register
from crossreg.resample import working_image
from crossreg.synth.geometry import extract_slice

SMALL_2D = CrossKeyConfig(ndim=2, channels=(4, 8), out_dim=16, hidden=32)


def descriptors(net: DescriptorNet, image, points: torch.Tensor) -> torch.Tensor:
    return CrossKeyFeatures(net).describe(image).at(points)


@pytest.fixture(scope="module")
def axial():
    return working_image(extract_slice(datasets.mni152_t1(2), "axial", 45), 2.0)


def test_descriptors_are_unit_and_read_at_world_points(axial):
    torch.manual_seed(0)
    net = DescriptorNet(SMALL_2D).eval()
    idx = np.array([[20, 30], [50, 60], [40, 41]])
    points = torch.from_numpy(axial.grid.index_to_world(idx.astype(float))).float()
    desc = descriptors(net, axial, points)
    assert desc.shape == (3, 16)
    np.testing.assert_allclose(desc.norm(dim=1).numpy(), 1.0, atol=1e-5)
    again = descriptors(net, axial, points.flip(0))
    np.testing.assert_allclose(again.flip(0).numpy(), desc.numpy(), atol=1e-6)  # per point, order-free
    assert not torch.allclose(desc[0], desc[1])


def test_weights_round_trip_in_fp16(axial, tmp_path):
    torch.manual_seed(1)
    net = DescriptorNet(SMALL_2D).eval()
    path = tmp_path / "m.pt"
    save_model(path, net, {"kind": "test"})
    loaded, meta = load_model(path)
    points = torch.from_numpy(axial.grid.index_to_world(np.array([[30.0, 40.0], [60.0, 50.0]]))).float()
    np.testing.assert_allclose(
        descriptors(loaded, axial, points).numpy(),
        descriptors(net, axial, points).numpy(),
        atol=5e-3,
    )
    assert meta == {"kind": "test"} and loaded.config == SMALL_2D


def test_bad_weights_files_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no such weights file"):
        load_model(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="not a readable weights file"):
        load_model(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelLoadError, match="not a crossreg descriptor model"):
        load_model(foreign)
    wrong = tmp_path / "wrong.pt"
    save_model(wrong, DescriptorNet(SMALL_2D), {})
    payload = torch.load(wrong, weights_only=True)
    payload["config"]["channels"] = [4, 8, 16]  # a file whose weights do not fit its architecture
    torch.save(payload, wrong)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(wrong)


def test_register_refuses_a_model_of_the_wrong_dimension(tmp_path):
    path = tmp_path / "m3d.pt"
    save_model(path, DescriptorNet(CrossKeyConfig(channels=(4,), out_dim=8, hidden=8)), {})
    image = extract_slice(datasets.mni152_t1(2), "axial", 45)
    with pytest.raises(CrossregError, match="3D but the images are 2D"):
        register(image, image, RegisterConfig(features="crosskey", weights=str(path)))
