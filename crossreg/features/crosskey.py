"""CrossKEY descriptors: a small dimension-generic CNN, run densely on a working grid, read at keypoints.

The published CrossKEY describes 32^3 patches with a 3D ResNet. Here one fully convolutional encoder
runs once over the whole working image (normalised intensity, field-of-view mask and, by default, the
dense MIND-SSC channels: a modality-independent start the network adds context to), and
a keypoint's descriptor is read from every level of the encoder at its world position (trilinear, a
"hypercolumn": fine levels for precise location, coarse levels for context), then mapped by a small
MLP to an L2-normalised vector. Every keypoint then costs a lookup instead of a patch forward pass,
which is what makes the network fast enough for a CPU. Rotation invariance is learned (training rotates
the moving image; see crossreg.train).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossreg.errors import CrossregError
from crossreg.features.base import Description
from crossreg.features.mind import MindConfig, mind_descriptors, mind_maps, mind_maps_tensor, ssc_pairs
from crossreg.features.weights import load_weights, save_weights, shipped_weights
from crossreg.image import Grid, Image
from crossreg.resample import grid_coords

if TYPE_CHECKING:
    from crossreg.config import RegisterConfig

#: The general model shipped with the package (trained by ``crossreg train general``).
DEFAULT_WEIGHTS = "crosskey_general_v2.pt"


class NetworkConfig(Protocol):
    """What :func:`network_input` reads of a network's config."""

    mind_input: bool


@dataclass(frozen=True)
class CrossKeyConfig:
    """Architecture of :class:`DescriptorNet`. The defaults are the shipped general model's
    (``weights/crosskey_general_v2.md``); a weights file carries its own config."""

    ndim: int = 3  # image dimension: 2 or 3
    # Feature channels per encoder level (non-empty); every level after the first halves the resolution.
    channels: tuple[int, ...] = (16, 32, 48, 64)
    out_dim: int = 64  # descriptor length (>= 1), L2-normalised
    hidden: int = 128  # width of the MLP head's hidden layer
    # The encoder also reads the dense MIND-SSC maps (default MindConfig) besides intensity and mask;
    # why: docs/benchmarks.md (training runs with and without them).
    mind_input: bool = True

    @property
    def in_channels(self) -> int:
        """Input channels: intensity, mask and (``mind_input``) the MIND-SSC maps."""
        return input_channels(self.ndim, self.mind_input)

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3) or not self.channels or self.out_dim < 1:
            raise ValueError(f"invalid CrossKeyConfig {self}")


def input_channels(ndim: int, mind_input: bool) -> int:
    """Channels of :func:`network_input`: intensity, mask and (``mind_input``) 12 (3D) or 4 (2D) per
    dilation of the default MIND-SSC."""
    return 2 + (len(MindConfig().dilations_mm) * len(ssc_pairs(ndim)) if mind_input else 0)


def _block(ndim: int, c_in: int, c_out: int, stride: int) -> nn.Sequential:
    conv = nn.Conv3d if ndim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if ndim == 3 else nn.InstanceNorm2d
    return nn.Sequential(
        conv(c_in, c_out, 3, stride=stride, padding=1),
        norm(c_out, affine=True),
        nn.LeakyReLU(0.1),
        conv(c_out, c_out, 3, padding=1),
        norm(c_out, affine=True),
        nn.LeakyReLU(0.1),
    )


class DescriptorNet(nn.Module):
    """Encoder ``(1, in_channels, *S) -> [(1, c_l, *S / 2^l)]``, hypercolumn head
    ``(N, sum c_l) -> (N, out_dim)``."""

    def __init__(self, config: CrossKeyConfig = CrossKeyConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.levels = nn.ModuleList(
            _block(config.ndim, config.in_channels if i == 0 else c[i - 1], c[i], 1 if i == 0 else 2)
            for i in range(len(c))
        )
        self.head = nn.Sequential(
            nn.Linear(sum(c), config.hidden), nn.LeakyReLU(0.1), nn.Linear(config.hidden, config.out_dim)
        )

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every encoder level's output for input ``x`` ``(B, in_channels, *S)``."""
        maps = []
        for level in self.levels:
            x = level(x)
            maps.append(x)
        return maps

    def descriptors_at(self, maps: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """Unit descriptors ``(N, out_dim)`` at grid_sample coordinates ``coords`` ``(N, d)`` (x, y, z
        order, -1..1 at the corner voxel centres) of batch item 0."""
        d = coords.shape[-1]
        where = coords.reshape(1, -1, *[1] * (d - 1), d).to(maps[0].dtype)
        columns = [
            F.grid_sample(m[:1], where, mode="bilinear", padding_mode="border", align_corners=True)
            .reshape(m.shape[1], -1)
            .T
            for m in maps
        ]
        return F.normalize(self.head(torch.cat(columns, dim=1)), dim=1)


def network_input(work: Image, config: NetworkConfig, mind: torch.Tensor | None = None) -> torch.Tensor:
    """``(1, config.in_channels, *work.shape)``: intensity (0 outside the mask), mask and, with
    ``config.mind_input``, the MIND-SSC maps (0 outside the mask) of a working image (``mind``:
    ``mind_maps(work)`` with the default :class:`MindConfig`, if already computed), on ``mind``'s
    device (the CPU without it)."""
    device = "cpu" if mind is None else mind.device
    array = torch.from_numpy(np.ascontiguousarray(work.array, np.float32)).to(device)
    mask = torch.from_numpy(np.ascontiguousarray(work.valid_mask())).to(device)
    return network_input_tensor(array, mask, work.grid, config, mind)


def network_input_tensor(
    array: torch.Tensor,
    mask: torch.Tensor,
    grid: Grid,
    config: NetworkConfig,
    mind: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`network_input` of a working array ``(*grid.shape)`` float32 and its bool mask, on their
    device."""
    inputs = torch.stack([torch.where(mask, array, 0.0), mask.float()])
    if config.mind_input:
        maps = mind_maps_tensor(array, grid) if mind is None else mind
        inputs = torch.cat([inputs, maps * inputs[1:2]])
    return inputs[None]


def _read_levels(
    net: DescriptorNet, work: Image, levels: list[torch.Tensor], points_mm: torch.Tensor
) -> torch.Tensor:
    """Unit descriptors ``(N, out_dim)`` float32 of world points ``(N, d)``, from the encoder levels
    of ``work``, on the network's device."""
    coords = grid_coords(work.grid, points_mm.detach().to(levels[0].device))
    with torch.no_grad():
        return net.descriptors_at(levels, coords).float()


@dataclass(frozen=True, eq=False)
class CrossKeyFeatures:
    """Learned CrossKEY descriptors (MRI <-> ultrasound), re-ranked by MIND-SSC: the ``crosskey`` entry
    of ``FEATURES``. The learned descriptor finds the anatomy brain-wide; MIND-SSC's 3x3x3 layout
    places it to the voxel among the learned shortlist (``DenseConfig.shortlist``)."""

    net: DescriptorNet
    mind: MindConfig = field(default_factory=MindConfig)
    dense_by_default: ClassVar[bool] = True  # trained on grids of candidates

    def describe(self, image: Image) -> Description:
        """The encoder run once over ``image``; descriptors read at any point from its levels."""
        device = next(self.net.parameters()).device
        maps = mind_maps(image, self.mind, device)
        # The network reads the MIND-SSC maps it was trained on; other settings only re-rank.
        network_maps = maps if self.mind == MindConfig() else None
        with torch.no_grad():
            levels = self.net.feature_maps(network_input(image, self.net.config, network_maps).to(device))
        reread = partial(mind_descriptors, image, config=self.mind, maps=maps)
        return Description(image, partial(_read_levels, self.net, image, levels), reread)


def crosskey_features(config: RegisterConfig, ndim: int) -> CrossKeyFeatures:
    """CrossKEY features of ``config.weights`` (the shipped model if None) on ``config.device``; raises
    CrossregError when the model is not ``ndim``-dimensional."""
    net, _ = load_model(config.weights, config.device)
    if net.config.ndim != ndim:
        raise CrossregError(
            f"the descriptor model is {net.config.ndim}D but the images are {ndim}D; use a model "
            f"trained on {ndim}D images"
        )
    return CrossKeyFeatures(net, config.mind)


# ---------------------------------------------------------------- weights files


def save_model(path: str | Path, net: DescriptorNet, meta: dict) -> None:
    """Write ``net`` (fp16 weights, its config and ``meta``: data, command, metrics) atomically."""
    save_weights(path, net, "crosskey", meta)


def default_weights_path() -> Path:
    """The shipped general model's file inside the package."""
    return shipped_weights(DEFAULT_WEIGHTS)


def load_model(path: str | Path | None = None, device: str = "cpu") -> tuple[DescriptorNet, dict]:
    """The network in ``path`` (the shipped general model if None), in eval mode on ``device``, and its
    meta. Raises ModelLoadError for a missing, corrupt or foreign file."""
    path = Path(path) if path is not None else default_weights_path()
    return load_weights(path, "crosskey", CrossKeyConfig, DescriptorNet, device)
