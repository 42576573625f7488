"""What a kind of features is: one image in, descriptors at any world point out.

A :class:`Features` implementation (an entry of :data:`crossreg.features.FEATURES`) describes a
working image once, computing whatever dense maps it needs over the whole image; the
:class:`Description` it returns then reads descriptors at any set of world points, as often as the
pipeline asks (keypoints or grids, a shortlist of candidates, the round trip of the verify stage).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from crossreg.image import Image

#: World points ``(N, d)`` mm (any float dtype, any device) -> unit descriptors ``(N, C)`` float32.
Reader = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class Description:
    """One working image, described: descriptors can be read at any world point.

    image: the working image (:func:`crossreg.resample.working_image`) the maps were computed on.
    at: the descriptor, on the features' device.
    rerank_at: a second descriptor that re-ranks a shortlist of candidates found with the first, or
        None when the features have none (dense matching then takes the nearest in ``at`` alone).
    coarse_at: a descriptor of wide context that finds the region first when searching a whole image
        (:func:`crossreg.locate.locate`), or None to search with ``at`` everywhere.
    """

    image: Image
    at: Reader
    rerank_at: Reader | None = None
    coarse_at: Reader | None = None


class Features(Protocol):
    """One image -> descriptors at world points: MIND-SSC, CrossKEY (and any kind added to FEATURES)."""

    #: ``matching="auto"`` matches densely whatever the fields of view (features trained for it).
    dense_by_default: bool

    def describe(self, image: Image) -> Description:
        """``image`` (a working image) described densely."""
        ...
