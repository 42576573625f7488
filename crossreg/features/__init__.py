"""Features: one image -> descriptors at world points. :data:`FEATURES` holds every kind by name.

A new kind is one module with a class that has ``describe(image) -> Description`` and
``dense_by_default`` (:class:`crossreg.features.base.Features`), plus one entry here: a builder
taking the registration config and the images' dimensionality. ``RegisterConfig.features``, the
CLI's ``--features``, batch's ``features`` column and the benchmark all read this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from crossreg.features.base import Description, Features
from crossreg.features.crosskey import crosskey_features
from crossreg.features.mind import MindFeatures
from crossreg.features.uae import embedding_features

if TYPE_CHECKING:
    from crossreg.config import RegisterConfig


def mind_features(config: RegisterConfig, ndim: int) -> MindFeatures:
    """MIND-SSC with ``config.mind`` on ``config.device`` (any dimensionality)."""
    return MindFeatures(config.mind, config.device)


FEATURES: dict[str, Callable[[RegisterConfig, int], Features]] = {
    "mind": mind_features,  # MIND-SSC: hand-crafted, any modality pair
    "crosskey": crosskey_features,  # learned CrossKEY descriptors (MRI <-> ultrasound), weights file
    "uae": embedding_features,  # universal anatomical embeddings (semantic + local), weights file
}


def make_features(config: RegisterConfig, ndim: int) -> Features:
    """The features ``config.features`` names, built for ``ndim``-dimensional images."""
    return FEATURES[config.features](config, ndim)


__all__ = ["FEATURES", "Description", "Features", "make_features"]
