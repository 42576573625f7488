"""plan_pair: how a pair will be registered, decided once, before anything is described.

Both images go to working grids of one isotropic, world-aligned spacing, so flipped, oblique or
anisotropic storage gives the same features. A working image's mask is its field of view (where
there is signal), computed once by :func:`crossreg.resample.working_image` and read by every later
stage: the choice of sparse or dense matching, the grids, the keypoint detector, the overlap check.

For 2D images, the matcher network (``matching="matcher2d"``, and ``auto`` wherever a matcher model
is shipped or given) replaces detection and description: both working grids then take the finer
spacing the network matches at (:data:`crossreg.matcher2d.world.WORKING_PIXELS` along the larger
extent, up to :data:`~crossreg.matcher2d.world.MATCHER_UPSAMPLE` times finer than the finest input
pixel, so that small images span enough of the network's coarse cells), and the fixed
image holds the queries, as in sparse matching.

The plan then says which image holds the queries. Sparse matching asks the fixed image's keypoints
for partners among the moving image's (the ratio test is the fixed side's). Dense matching asks every
point of the smaller field of view for its nearest candidate in the larger one, so that nothing needs
to be detected twice. From there on both images go through the same code as ``query`` and
``reference``; only :class:`crossreg.correspond.Correspondences` turns them back into fixed and moving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from crossreg.config import Mode, RegisterConfig
from crossreg.errors import DimensionMismatchError, InvalidConfigError
from crossreg.estimate import RansacConfig
from crossreg.features import Features
from crossreg.image import Image, data_mask
from crossreg.matcher2d.match import matcher_available
from crossreg.matcher2d.world import MATCHER_UPSAMPLE, WORKING_PIXELS
from crossreg.resample import to_working_grid, working_image

log = logging.getLogger(__name__)

#: ``matching="auto"`` matches densely where the smaller field of view is under this share of the
#: larger: an ultrasound cone in a brain MRI, where the cone's keypoints rarely recur in the MRI's
#: (cropped slabs, which keep a large share, stay sparse: as accurate there and much faster).
DENSE_FOV_RATIO = 0.25

#: Working grids aim for this many voxels along the longest axis (3D, 2D): enough anatomy per
#: descriptor neighbourhood, few enough voxels for a CPU.
WORKING_SIZE = {3: 96, 2: 192}

Role = Literal["fixed", "moving"]


@dataclass(frozen=True, eq=False)
class Side:
    """One image of the pair on its working grid; ``image.mask`` is its field of view."""

    role: Role
    image: Image
    seed: int  # of its keypoint sampling

    @property
    def fov_voxels(self) -> int:
        """Voxels in the field of view (both working grids share a spacing: volumes compare)."""
        return int(self.image.valid_mask().sum())


@dataclass(frozen=True, eq=False)
class Plan:
    """How a pair is registered: the two working images as query and reference, and the mode."""

    query: Side  # its points look for partners (dense: the smaller field of view)
    reference: Side  # the image they are looked for in
    mode: Mode
    ransac: RansacConfig  # the settings of ``mode``
    spacing_mm: float  # of both working grids
    fov_ratio: float  # the smaller field of view's volume over the larger's

    def side(self, role: Role) -> Side:
        """The fixed or the moving side."""
        return self.query if self.query.role == role else self.reference


def without_padding(side: Side, image: Image, spacing_mm: float) -> Side:
    """``side`` (``image`` on its working grid) without ``image``'s padding and the voxels next to it
    (:func:`crossreg.image.data_mask`) where ``image`` has no mask of its own, as when read from a file.
    Dense queries fill the smaller field of view, an ultrasound cone whose edge, blurred into the zero
    padding around it, looks like structure to the working grid's field-of-view test; a query there
    would describe the cone's outline, which the other image does not have."""
    if image.mask is not None:
        return side
    data = to_working_grid(image.with_array(image.array, data_mask(image)), spacing_mm).valid_mask()
    work = side.image
    return Side(side.role, work.with_array(work.array, work.valid_mask() & data), side.seed)


def working_spacing(
    fixed: Image,
    moving: Image,
    spacing_mm: float | None = None,
    size: int | None = None,
    upsample: float = 1.0,
) -> float:
    """Isotropic spacing (mm) of the working grids: ``spacing_mm`` if given, else the larger image
    extent over ``size`` voxels (None: :data:`WORKING_SIZE`), never finer than the finest input voxel
    over ``upsample``."""
    if spacing_mm is not None:
        return float(spacing_mm)
    extent = max(np.ptp(im.grid.corners_mm(), axis=0).max() for im in (fixed, moving))
    finest = min(min(fixed.spacing_mm), min(moving.spacing_mm))
    return float(max(extent / (size or WORKING_SIZE[fixed.ndim]), finest / upsample))


def uses_matcher2d(config: RegisterConfig, ndim: int) -> bool:
    """Whether a pair of ``ndim``-D images goes to the 2D matcher network: asked for, or ``auto`` on 2D
    images with a matcher model (``Matcher2dSettings.weights``, or the shipped one). Raises
    InvalidConfigError when it is asked for on 3D images."""
    if config.matching == "matcher2d" and ndim != 2:
        raise InvalidConfigError(
            f"matching 'matcher2d' matches 2D images only, and these are {ndim}D: use auto, sparse or dense"
        )
    auto = config.matching == "auto" and ndim == 2 and matcher_available(config.matcher2d.weights)
    return config.matching == "matcher2d" or auto


def choose_mode(matching: str, features: Features, fov_ratio: float) -> Mode:
    """``matching`` with ``auto`` and ``descriptors`` resolved: dense for features trained on grids and
    where the smaller field of view is under :data:`DENSE_FOV_RATIO` of the larger, sparse otherwise."""
    if matching not in ("auto", "descriptors"):
        return "dense" if matching == "dense" else "sparse"
    return "dense" if features.dense_by_default or fov_ratio < DENSE_FOV_RATIO else "sparse"


def plan_pair(
    fixed: Image,
    moving: Image,
    config: RegisterConfig,
    features: Features,
    working: Callable[[Image, float], Image] = working_image,
) -> Plan:
    """The plan for registering ``moving`` to ``fixed`` with ``features`` under ``config``; ``working``
    makes the working images (:func:`crossreg.resample.working_image`, or a cache of its results)."""
    if fixed.ndim != moving.ndim:
        raise DimensionMismatchError(f"fixed image is {fixed.ndim}D but moving image is {moving.ndim}D")
    if config.model == "homography" and fixed.ndim != 2:
        raise InvalidConfigError(
            f"model 'homography' is a 2D projective transform, and these images are {fixed.ndim}D: "
            "use --model rigid, similarity or affine"
        )
    log.info("fixed %s; moving %s", fixed.summary(), moving.summary())
    learned = uses_matcher2d(config, fixed.ndim)
    size, upsample = (WORKING_PIXELS, MATCHER_UPSAMPLE) if learned else (None, 1.0)
    spacing = working_spacing(fixed, moving, config.working_spacing_mm, size, upsample)
    f_side = Side("fixed", working(fixed, spacing), config.seed)
    m_side = Side("moving", working(moving, spacing), config.seed + 1)
    smaller, larger = sorted((f_side.fov_voxels, m_side.fov_voxels))
    fov_ratio = smaller / max(larger, 1)
    mode = "matcher2d" if learned else choose_mode(config.matching, features, fov_ratio)
    fixed_queries = mode != "dense" or f_side.fov_voxels < m_side.fov_voxels
    query, reference = (f_side, m_side) if fixed_queries else (m_side, f_side)
    if mode == "dense":
        query = without_padding(query, fixed if fixed_queries else moving, spacing)
    log.info(
        "%s matching, %s queries on %.2g mm grids: the smaller field of view is %.0f%% of the larger",
        mode,
        query.role,
        spacing,
        100 * fov_ratio,
    )
    return Plan(query, reference, mode, config.settings(mode).ransac, spacing, fov_ratio)
