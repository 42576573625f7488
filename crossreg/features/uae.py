"""Universal anatomical embeddings (UAE): every voxel gets a coarse *semantic* and a fine *local* vector.

One dimension-generic encoder-decoder runs once over a working image (normalised intensity, field-of-
view mask and the dense MIND-SSC channels, as CrossKEY reads). The semantic embedding comes from a
coarse decoder level (large receptive field: which structure is this?), the local one from the
finest (exactly where in it?); both are L2-normalised, and the similarity of two points is the mean
of the two cosines. Training (:mod:`crossreg.train.embedding`) makes the same anatomy embed alike
across synthetic subjects, contrasts and fields of view. :func:`crossreg.locate.locate` searches the
semantic embedding over a whole image, then the local one around its best hits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossreg.errors import CrossregError
from crossreg.features.base import Description
from crossreg.features.crosskey import input_channels, network_input
from crossreg.features.mind import mind_maps
from crossreg.features.weights import load_weights, save_weights, shipped_weights
from crossreg.image import Image

if TYPE_CHECKING:
    from crossreg.config import RegisterConfig

#: The general model shipped with the package (trained by ``crossreg train embedding``).
DEFAULT_WEIGHTS = "uae_general_v1.pt"


@dataclass(frozen=True)
class EmbeddingConfig:
    """Architecture of :class:`EmbeddingNet`; a weights file carries its own."""

    ndim: int = 3  # image dimension: 2 or 3
    # Channels per encoder level (>= 2 levels); every level after the first halves the resolution.
    channels: tuple[int, ...] = (16, 32, 48, 64, 96)
    semantic_level: int = 2  # decoder level of the semantic embedding (resolution / 2**level), >= 1
    semantic_dim: int = 64  # semantic embedding length
    local_dim: int = 32  # local embedding length (finest level)
    mind_input: bool = True  # the encoder also reads the dense MIND-SSC maps

    @property
    def in_channels(self) -> int:
        """Input channels: intensity, mask and (``mind_input``) the MIND-SSC maps."""
        return input_channels(self.ndim, self.mind_input)

    def __post_init__(self) -> None:
        if (
            self.ndim not in (2, 3)
            or len(self.channels) < 2
            or not 1 <= self.semantic_level < len(self.channels)
            or min(self.semantic_dim, self.local_dim) < 1
        ):
            raise ValueError(f"invalid EmbeddingConfig {self}")


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


class EmbeddingNet(nn.Module):
    """``(B, in_channels, *S) -> (semantic (B, semantic_dim, *S / 2**semantic_level),
    local (B, local_dim, *S))``, both unit vectors along the channels."""

    def __init__(self, config: EmbeddingConfig = EmbeddingConfig()) -> None:
        super().__init__()
        self.config = config
        c, d = config.channels, config.ndim
        self.down = nn.ModuleList(
            _block(d, config.in_channels if i == 0 else c[i - 1], c[i], 1 if i == 0 else 2)
            for i in range(len(c))
        )
        self.up = nn.ModuleList(_block(d, c[i + 1] + c[i], c[i], 1) for i in range(len(c) - 1))
        conv = nn.Conv3d if d == 3 else nn.Conv2d
        self.semantic_head = conv(c[config.semantic_level], config.semantic_dim, 1)
        self.local_head = conv(c[0], config.local_dim, 1)

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this (one per halving)."""
        return 2 ** (len(self.config.channels) - 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for level in self.down:
            x = level(x)
            skips.append(x)
        semantic = None
        for i in range(len(self.up) - 1, -1, -1):
            x = F.interpolate(x, size=skips[i].shape[2:], mode="nearest")
            x = self.up[i](torch.cat([x, skips[i]], dim=1))
            if i == self.config.semantic_level:
                semantic = F.normalize(self.semantic_head(x), dim=1)
        return semantic, F.normalize(self.local_head(x), dim=1)


def embed_tensor(net: EmbeddingNet, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`EmbeddingNet.forward` of ``inputs`` ``(B, C, *S)`` of any size: zero-padded up to a
    multiple of ``net.multiple``, the maps cropped back to ``S`` (semantic: ``ceil(S / 2**level)``)."""
    size = inputs.shape[2:]
    m = net.multiple
    padded = F.pad(inputs, [p for s in reversed(size) for p in (0, -s % m)])
    semantic, local = net(padded)
    k = 2**net.config.semantic_level
    semantic = semantic[(..., *[slice(0, -(-s // k)) for s in size])]
    return semantic, local[(..., *[slice(0, s) for s in size])]


def read_map(embedding: torch.Tensor, index_xyz: torch.Tensor, stride: int) -> torch.Tensor:
    """Unit vectors ``(N, C)`` float32 of map ``embedding`` ``(1, C, *s)`` (batch item 0), whose voxel
    ``i`` sits at full-resolution index ``stride * i``, read (linear) at full-resolution indices
    ``index_xyz`` ``(N, d)`` (x, y, z order)."""
    d = index_xyz.shape[-1]
    size = torch.tensor(embedding.shape[2:][::-1], dtype=index_xyz.dtype, device=index_xyz.device)
    coords = 2.0 * (index_xyz / stride) / torch.clamp(size - 1, min=1) - 1.0
    where = coords.reshape(1, -1, *[1] * (d - 1), d).to(embedding.dtype)
    values = F.grid_sample(embedding[:1], where, mode="bilinear", padding_mode="border", align_corners=True)
    return F.normalize(values.reshape(embedding.shape[1], -1).T.float(), dim=1)


@dataclass(frozen=True, eq=False)
class Embedding:
    """A working image embedded: its semantic and local maps, read at any world point."""

    image: Image
    semantic: torch.Tensor  # (1, semantic_dim, *s)
    local: torch.Tensor  # (1, local_dim, *S)
    stride: int  # the semantic map's voxel i sits at working index stride * i

    def _index(self, points_mm: torch.Tensor) -> torch.Tensor:
        index = self.image.grid.world_to_index(points_mm.detach().cpu().double().numpy())
        return torch.from_numpy(np.asarray(index, dtype=np.float32)).to(self.local.device)

    def semantic_at(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Semantic unit vectors ``(N, semantic_dim)`` at world points ``(N, d)``."""
        return read_map(self.semantic, self._index(points_mm), self.stride)

    def local_at(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Local unit vectors ``(N, local_dim)`` at world points ``(N, d)``."""
        return read_map(self.local, self._index(points_mm), 1)

    def both_at(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Semantic and local vectors joined and scaled by 1/sqrt(2): a unit vector whose dot product
        is the mean of the two cosine similarities."""
        return torch.cat([self.semantic_at(points_mm), self.local_at(points_mm)], dim=1) / np.sqrt(2.0)


def embed(net: EmbeddingNet, image: Image) -> Embedding:
    """``image`` (a working image) embedded by ``net`` on the network's device."""
    device = next(net.parameters()).device
    maps = mind_maps(image) if net.config.mind_input else None
    with torch.no_grad():
        semantic, local = embed_tensor(net, network_input(image, net.config, maps).to(device))
    return Embedding(image, semantic, local, 2**net.config.semantic_level)


@dataclass(frozen=True, eq=False)
class EmbeddingFeatures:
    """Universal anatomical embeddings: the ``uae`` entry of ``FEATURES``. ``at`` reads the joined
    semantic and local vectors; ``coarse_at`` the semantic one, which finds the region first."""

    net: EmbeddingNet
    dense_by_default: ClassVar[bool] = True  # every voxel has an embedding

    def describe(self, image: Image) -> Description:
        """The network run once over ``image``."""
        embedding = embed(self.net, image)
        return Description(image, embedding.both_at, coarse_at=embedding.semantic_at)


def embedding_features(config: RegisterConfig, ndim: int) -> EmbeddingFeatures:
    """UAE features of ``config.weights`` (the shipped model if None) on ``config.device``; raises
    CrossregError when the model is not ``ndim``-dimensional."""
    net, _ = load_embedding_model(config.weights, config.device)
    if net.config.ndim != ndim:
        raise CrossregError(
            f"the embedding model is {net.config.ndim}D but the images are {ndim}D; give a model "
            f"trained on {ndim}D images (--weights) or use --features mind"
        )
    return EmbeddingFeatures(net)


def save_embedding_model(path: str | Path, net: EmbeddingNet, meta: dict) -> None:
    """Write ``net`` (fp16 weights, config, ``meta``) atomically."""
    save_weights(path, net, "uae", meta)


def load_embedding_model(path: str | Path | None = None, device: str = "cpu") -> tuple[EmbeddingNet, dict]:
    """The embedding network in ``path`` (the shipped general model if None) on ``device``, and its
    meta. Raises ModelLoadError for a missing, corrupt or foreign file."""
    path = Path(path) if path is not None else shipped_weights(DEFAULT_WEIGHTS)
    return load_weights(path, "uae", EmbeddingConfig, EmbeddingNet, device)
