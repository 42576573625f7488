"""The 2D matcher on images with a physical space: correspondences in world millimetres (LPS).

Both images go onto isotropic, world-aligned working grids of one spacing
(:func:`crossreg.resample.working_image`), so the matcher sees structure at the same scale whatever
the storage (spacing, flips, direction); matches found in working pixels go back to world points
through each working grid. The working images' masks (their fields of view) bound the matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crossreg.errors import InvalidImageError
from crossreg.image import Image
from crossreg.matcher2d.match import Matcher2dConfig, match_images
from crossreg.matcher2d.net import MatcherNet
from crossreg.resample import working_image

#: Working grids aim for this many pixels along the longer side of the larger image ...
WORKING_PIXELS = 480
#: ... upsampling small images by at most this factor: the network finds matches on a grid of 8 x 8
#: pixel cells, so a 2 mm slice of a brain needs finer pixels to hold enough of them.
MATCHER_UPSAMPLE = 4.0


@dataclass(frozen=True, eq=False)
class WorldMatches:
    """Matches of two images: ``points0_mm``, ``points1_mm`` ``(M, 2)`` float64 world mm (LPS) in the
    first and the second image, ``confidence`` ``(M,)`` float32 in [0, 1]."""

    points0_mm: np.ndarray
    points1_mm: np.ndarray
    confidence: np.ndarray

    def __len__(self) -> int:
        return len(self.confidence)


def match_working(
    net: MatcherNet, work0: Image, work1: Image, config: Matcher2dConfig | None = None
) -> WorldMatches:
    """Matches of two working images (2D, on grids with their fields of view as masks)."""
    images = [torch.from_numpy(w.array) for w in (work0, work1)]
    masks = [torch.from_numpy(w.valid_mask()) for w in (work0, work1)]
    found = match_images(net, images[0], images[1], masks[0], masks[1], config or Matcher2dConfig())
    return WorldMatches(
        work0.grid.index_to_world(found.points0_px.double().numpy()),
        work1.grid.index_to_world(found.points1_px.double().numpy()),
        found.confidence.float().numpy(),
    )


def match_world(
    net: MatcherNet, image0: Image, image1: Image, config: Matcher2dConfig | None = None
) -> WorldMatches:
    """Matches of two 2D images, each on a working grid (a spacing giving the larger extent
    :data:`WORKING_PIXELS` pixels, never finer than the finest input pixel over
    :data:`MATCHER_UPSAMPLE`)."""
    for image in (image0, image1):
        if image.ndim != 2:
            raise InvalidImageError(
                f"{image.source or 'image'} is {image.ndim}D: the matcher matches 2D images only"
            )
    extent = max(np.ptp(im.grid.corners_mm(), axis=0).max() for im in (image0, image1))
    finest = min(min(image0.spacing_mm), min(image1.spacing_mm))
    spacing = float(max(extent / WORKING_PIXELS, finest / MATCHER_UPSAMPLE))
    return match_working(net, working_image(image0, spacing), working_image(image1, spacing), config)
