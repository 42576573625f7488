"""register(fixed, moving) -> Result: the whole pipeline, one named stage after another.

plan (working grids, fields of view, which image holds the queries, sparse, dense or matcher2d) -> describe
(points and descriptors of each image, by a kind of FEATURES) -> correspond (matches, by a matcher of
MATCHERS) -> estimate (RANSAC) -> verify (overlap, confidence; round trip, ambiguity, agreement) -> polish
(intensity refinement) -> deformable (optional: a displacement field after the linear transform).
docs/architecture.md draws it; each stage is a function of its own module.

With ``matching="auto"`` on 2D images and a matcher model at hand, the matcher network goes first;
when its matches give no transform the checks stand behind (too few, or a refused confidence), the
pair is registered again with ``matching="descriptors"`` (the configured features' sparse or dense
matching), and ``Result.timings_s`` keeps the network's attempt as ``matcher2d_refused``.

:class:`Registrator` runs the pipeline: its models (the features of each image dimensionality, the 2D
matcher network) are loaded once and handed to the stages that use them, so that many pairs (and the
second attempt above) read no weights file again. :func:`register` is one pair with a fresh Registrator.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from crossreg.config import RegisterConfig
from crossreg.correspond import correspond
from crossreg.deformable import deform
from crossreg.describe import describe
from crossreg.errors import NoOverlapError, RegistrationFailed
from crossreg.estimate import estimate
from crossreg.features import Features, make_features
from crossreg.image import Image
from crossreg.image_cache import ImageCache
from crossreg.matcher2d.match import load_matcher
from crossreg.matcher2d.net import MatcherNet
from crossreg.plan import plan_pair, uses_matcher2d
from crossreg.polish import polish
from crossreg.result import Result
from crossreg.stopwatch import Stopwatch
from crossreg.verify import verify

log = logging.getLogger(__name__)


def register(
    fixed: Image,
    moving: Image,
    config: RegisterConfig | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> Result:
    """Register ``moving`` to ``fixed``: a transform mapping fixed points to moving points.

    on_stage: told what each stage is doing as it starts (a progress line). Raises
    RegistrationFailed when too few matches agree on a transform or they could be chance, and
    NoOverlapError when the found transform leaves the images without common field of view. For many
    pairs, a :class:`Registrator` loads the models once, and describes an image it has seen once.
    """
    return Registrator(config, cache_images=0).register(fixed, moving, on_stage)


class Registrator:
    """Registers pair after pair under one config, its models loaded once.

    ``Registrator(config).register(fixed, moving)`` gives what ``register(fixed, moving, config)``
    gives. The features of each image dimensionality are built on its first pair, the 2D matcher
    network on the first pair that goes to it; both then stay on ``config.device``. The working images
    and descriptions of the last ``cache_images`` images registered are kept
    (:class:`crossreg.image_cache.ImageCache`): sweep after sweep registered to one MRI describe it once.
    """

    def __init__(self, config: RegisterConfig | None = None, cache_images: int = 2) -> None:
        self.config = config or RegisterConfig()
        self._features: dict[int, Features] = {}  # by image dimensionality
        self._matcher: MatcherNet | None = None
        self._images = ImageCache(cache_images)

    def register(
        self,
        fixed: Image,
        moving: Image,
        on_stage: Callable[[str], None] | None = None,
        seed: int | None = None,
    ) -> Result:
        """Register ``moving`` to ``fixed`` as :func:`register` does; ``seed`` (keypoint sampling and
        RANSAC) replaces ``config.seed`` for this pair if given, e.g. a benchmark case's seed."""
        config = self.config if seed is None else replace(self.config, seed=seed)
        if config.matching != "auto" or not uses_matcher2d(config, fixed.ndim):
            return self._once(fixed, moving, config, on_stage)
        start = time.perf_counter()
        try:
            return self._once(fixed, moving, config, on_stage)
        except (RegistrationFailed, NoOverlapError) as err:
            log.info("matcher network: %s; registering with %s descriptors instead", err, config.features)
            refused = time.perf_counter() - start
        result = self._once(fixed, moving, replace(config, matching="descriptors"), on_stage)
        return replace(result, timings_s={"matcher2d_refused": refused, **result.timings_s})

    def _features_of(self, ndim: int) -> Features:
        """The features of ``ndim``-D images, built on first use."""
        if ndim not in self._features:
            self._features[ndim] = make_features(self.config, ndim)
        return self._features[ndim]

    def _matcher_net(self) -> MatcherNet:
        """The 2D matcher network of ``config.matcher2d.weights``, loaded on first use."""
        if self._matcher is None:
            self._matcher, _ = load_matcher(self.config.matcher2d.weights, self.config.device)
        return self._matcher

    def _once(
        self, fixed: Image, moving: Image, config: RegisterConfig, on_stage: Callable[[str], None] | None
    ) -> Result:
        """The pipeline once."""
        features = self._features_of(fixed.ndim)
        clock = Stopwatch(on_stage)
        with clock("plan", "working grids and fields of view"):
            plan = plan_pair(fixed, moving, config, features, self._images.working)
        grids = f"{plan.mode} {config.features} descriptors on {plan.spacing_mm:.2g} mm grids"
        with clock("describe", grids):
            query, reference = describe(plan, features, config, self._images)
        what = "the images" if plan.mode == "matcher2d" else f"{len(query)} x {len(reference)} points"
        with clock("correspond", f"matching {what}"):
            net = self._matcher_net() if plan.mode == "matcher2d" else None
            pairs = correspond(query, reference, plan, config, net)
        with clock("estimate", f"RANSAC ({config.model}) on {len(pairs)} matches"):
            found = estimate(
                pairs.fixed_mm,
                pairs.moving_mm,
                config.model,
                plan.ransac,
                seed=config.seed,
                device=config.device,
            )
        with clock("verify", "checking the transform"):
            verdict = verify(found, pairs, plan, config)
        with clock("polish", "intensity refinement" if config.refine else "done"):
            transform = polish(fixed, moving, found, pairs, plan, config)
        deformed = None
        if config.deformable is not None:
            with clock("deformable", "deformable registration (convex search, then Adam)"):
                matches = (pairs.fixed_mm.numpy(), pairs.moving_mm.numpy())
                deformed = deform(fixed, moving, transform, config.deformable, config.device, matches)
        log.info("registered with %d inliers of %d matches", found.n_inliers, len(pairs))
        return Result(
            transform=transform,
            ransac_transform=found.transform,
            fixed_points_mm=pairs.fixed_mm.numpy(),
            moving_points_mm=pairs.moving_mm.numpy(),
            inliers=found.inliers.cpu().numpy(),
            match_confidence=pairs.confidence.numpy(),
            confidence=verdict.confidence,
            round_trip=verdict.round_trip,
            ambiguity=verdict.ambiguity,
            agreement=verdict.agreement,
            rmse_mm=found.rmse_mm,
            timings_s=clock.seconds,
            fixed=fixed,
            moving=moving,
            deformable=deformed,
        )


@functools.lru_cache(maxsize=8)
def warm_registrator(config: RegisterConfig) -> Registrator:
    """This process's Registrator of ``config``: its models load on its first pair and stay for every
    caller that registers with the same config (whatever their seeds), e.g. a batch worker's rows."""
    return Registrator(config)
