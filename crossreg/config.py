"""The settings of a registration: :class:`RegisterConfig` and the ways of matching it chooses from.

Every setting has one owner. Sparse matching (keypoints on both images), dense matching (grids,
no detection) and, for 2D images, the detector-free matcher network each own their RANSAC settings,
because their matches differ in kind: sparse and matcher2d matches passed a mutual test, dense ones
did not, and neighbouring dense queries see overlapping anatomy, so their wrong matches agree with
each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from crossreg.correspond import MATCHERS
from crossreg.deformable.config import DeformableConfig
from crossreg.errors import InvalidConfigError
from crossreg.estimate import MODELS, RansacConfig
from crossreg.features import FEATURES
from crossreg.features.mind import MindConfig
from crossreg.keypoints import KeypointConfig
from crossreg.matching import MatchConfig
from crossreg.refine import RefineConfig
from crossreg.transform import Model

Mode = Literal["sparse", "dense", "matcher2d"]
#: ``RegisterConfig.matching`` values: ``auto``, ``descriptors`` (``auto`` without the matcher network:
#: sparse or dense descriptor matching as the plan decides) or a matcher of
#: :data:`crossreg.correspond.MATCHERS`.
MATCHING = ("auto", "descriptors", *MATCHERS)
#: Default of ``RegisterConfig.min_agreement``: chosen on benchmark seeds 0 and 1 (MR -> ultrasound
#: cones with CrossKEY, their known negatives, 2D pairs with the matcher network), checked on seed 2
#: (docs/reliability.md, "Agreement gate").
MIN_AGREEMENT = 0.05


@dataclass(frozen=True)
class SparseConfig:
    """Sparse matching: keypoints detected on both images, mutual nearest neighbours with a ratio test.
    Precise where both images show the same anatomy; blind where the smaller image's keypoints do not
    recur in the larger one."""

    keypoints: KeypointConfig = field(default_factory=KeypointConfig)  # where to look on each image
    matching: MatchConfig = field(default_factory=MatchConfig)  # which nearest neighbours are kept
    ransac: RansacConfig = field(default_factory=RansacConfig)


def _dense_ransac() -> RansacConfig:
    # Every query is matched, so most matches are wrong: many hypotheses; neighbouring wrong matches
    # agree, so matches within 8 mm count as one piece of evidence; the inliers are the share of the
    # smaller image the transform explains, and two unrelated skin surfaces can agree on a few dozen.
    return RansacConfig(iterations=20000, independence_mm=8.0, min_inlier_fraction=0.05)


@dataclass(frozen=True)
class DenseConfig:
    """Dense matching (UAE-style), no keypoint detection: every query point of the image with the
    smaller field of view takes its nearest candidate among a grid over the larger one. No ratio or
    mutual test: in a small cone most points are ambiguous, and RANSAC, not a test, sorts the few
    right matches from the rest. Grid steps are rounded up to whole working voxels."""

    spacing_mm: float = 2.0  # candidates: a grid over the larger field of view, one every this
    query_spacing_mm: float = 3.0  # queries: a grid over the smaller field of view
    max_queries: int = 1500  # the query grid grows coarser where it would hold more points
    border_mm: float = 2.0  # both grids keep this far inside their field of view
    shortlist: int = 64  # features with a re-ranking descriptor: how many candidates it ranks (0: off)
    ransac: RansacConfig = field(default_factory=_dense_ransac)

    def __post_init__(self) -> None:
        if min(self.spacing_mm, self.query_spacing_mm) <= 0 or self.border_mm < 0:
            raise InvalidConfigError(f"DenseConfig needs positive grid spacings and border_mm >= 0: {self}")
        if self.max_queries < 1 or self.shortlist < 0:
            raise InvalidConfigError(f"DenseConfig needs max_queries >= 1 and shortlist >= 0: {self}")


@dataclass(frozen=True)
class Matcher2dSettings:
    """Detector-free matching of 2D images by the matcher network (:mod:`crossreg.matcher2d`): it finds
    corresponding points on both working images at once; each image's features then describe it
    there, for the round trip. Its matches passed a mutual and a confidence test, as sparse ones did."""

    weights: str | None = None  # matcher model file (`crossreg train matcher`); None: the shipped one
    threshold: float = 0.2  # coarse dual-softmax confidence a match needs (0..1)
    ransac: RansacConfig = field(default_factory=RansacConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise InvalidConfigError(f"matcher2d threshold {self.threshold:g}: expected a value in [0, 1)")


@dataclass(frozen=True)
class RegisterConfig:
    """Everything that determines a registration, with the seed and (learned features) a weights file."""

    model: Model = "rigid"  # transform family: rigid, similarity or affine
    features: str = "mind"  # a kind of crossreg.features.FEATURES: mind (any pair), crosskey (MR-US)
    weights: str | None = None  # learned features' weights file; None: the model shipped for them
    working_spacing_mm: float | None = None  # isotropic working grid; None: from the images' extent
    matching: str = "auto"  # sparse, dense, matcher2d, descriptors or auto: the plan decides per pair
    sparse: SparseConfig = field(default_factory=SparseConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    matcher2d: Matcher2dSettings = field(default_factory=Matcher2dSettings)
    mind: MindConfig = field(default_factory=MindConfig)  # MIND-SSC as features, and as re-ranking
    refine: RefineConfig | None = field(default_factory=RefineConfig)  # intensity polish; None: off
    deformable: DeformableConfig | None = None  # deformable stage after polish; None: linear only
    min_confidence: float = 0.5  # a less confident transform is refused (docs/reliability.md)
    # A transform at which the images agree less than this (crossreg.verify.agreement, -1..1) is
    # refused: calibrated in docs/reliability.md; -1 turns the gate off.
    min_agreement: float = MIN_AGREEMENT
    device: str = "cpu"  # torch device of descriptors and refinement: cpu, cuda, cuda:N
    seed: int = 0  # keypoint sampling and RANSAC

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("model", self.model, MODELS),
            ("features", self.features, tuple(FEATURES)),
            ("matching", self.matching, MATCHING),
        ):
            if value not in allowed:
                raise InvalidConfigError(f"{name} {value!r} is unknown; choose from {', '.join(allowed)}")
        if self.deformable is not None and self.model == "homography":
            raise InvalidConfigError("the deformable stage follows a rigid, similarity or affine transform")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise InvalidConfigError(f"min confidence {self.min_confidence:g}: expected a value in [0, 1]")
        if not -1.0 <= self.min_agreement <= 1.0:
            raise InvalidConfigError(f"min agreement {self.min_agreement:g}: expected a value in [-1, 1]")

    def settings(self, mode: Mode) -> SparseConfig | DenseConfig | Matcher2dSettings:
        """The settings of one way of matching."""
        return {"sparse": self.sparse, "dense": self.dense, "matcher2d": self.matcher2d}[mode]
