"""Settings of the deformable stage (:func:`crossreg.deformable.deform`), lengths in world mm."""

from __future__ import annotations

from dataclasses import dataclass

from crossreg.errors import InvalidConfigError


@dataclass(frozen=True)
class DeformableConfig:
    """ConvexAdam-style deformable registration after the linear result: a discrete search on a coarse
    grid of nodes, then Adam on a dense displacement field; MIND-SSC features on a working grid."""

    feature_spacing_mm: float = 2.0  # working grid of MIND-SSC features and of the written field
    grid_spacing_mm: float = 6.0  # nodes of the discrete search; rounded to whole working voxels
    # The search tries displacements up to +-this per axis (6: 7^3 candidates; 10 let MR-ultrasound
    # pairs find 12-22 mm fields and doubled their error on development cases) ...
    capture_mm: float = 6.0
    step_mm: float = 2.0  # ... in steps of this
    weight: float = 4.0  # diffusion regularisation of the dense field (larger: smoother, smaller)
    # Pull towards zero displacement where the fields of view do not overlap (0.05 and 0.2 left 1.7
    # and 1.5 mm far outside a cone after 30 Adam steps).
    outside_weight: float = 1.0
    iterations: int = 30  # Adam steps of the dense field (60 did no better on development cases)
    learning_rate: float = 0.5  # Adam step, mm of displacement
    # Structure confidence: gradient energy this many times the noise floor (that of the flattest tenth
    # of each image) weighs 1/2 in the feature cost; flatter regions less (CT soft tissue). 0: off;
    # 4 cost MR-MR pairs accuracy (T2 4.0 -> 1.5 mm instead of 1.2).
    structure_floor: float = 1.0
    # Share of each image's intensities replaced by their rank before MIND-SSC (histogram
    # equalisation, crossreg.deformable.features.equalised). On 4 development pairs per kind (seeds
    # 100-103; TRE mm after the stage): CT-like 2.24 at 0 (MIND-SSC of the CT brain flat under the
    # bone's contrast), 1.55 at 0.5, 1.7 at 1; T2-like 1.18, 1.24, 1.25-1.3; ultrasound 3.5 at each.
    equalise: float = 0.5
    # The linear stage's matches as a soft point term of the Adam stage (crossreg.deformable.points):
    # weight of its bounded penalty against the feature cost (0: off; 0.5, 1 and 2 gave the same mean
    # on 8 development pairs, 2.04-2.05 mm against 2.09 without: better on MR-ultrasound from CrossKEY's
    # rigid start, 2.21 -> 1.68 mm, a little worse on MR-MR, 1.19 -> 1.33; on seeds 100-103, 4 cones:
    # 3.79 mm without, 3.25 with from CrossKEY's rigid start, 3.32 without, 3.52 with from MIND-SSC's),
    # and the largest displacement a match may ask for beyond the linear result.
    point_weight: float = 1.0
    point_capture_mm: float = 10.0
    # Below this agreement of the two images' features at the linear result (-1..1,
    # crossreg.deformable.features.agreement) the feature term is left out and only the matches pull
    # the field (MR-ultrasound development pair at 0.24: 3.6 mm with the features, 2.3 without;
    # MR-MR and MR-CT pairs 0.64-0.88). -1: always use the features.
    min_agreement: float = 0.4

    def __post_init__(self) -> None:
        positive = (
            "feature_spacing_mm",
            "grid_spacing_mm",
            "capture_mm",
            "step_mm",
            "learning_rate",
            "point_capture_mm",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise InvalidConfigError(f"deformable {name} {getattr(self, name):g}: expected a value > 0")
        weights = (self.weight, self.outside_weight, self.point_weight, self.structure_floor)
        if min(weights) < 0:
            raise InvalidConfigError(
                f"deformable weights {self.weight:g}, {self.outside_weight:g}, point weight "
                f"{self.point_weight:g}, structure floor {self.structure_floor:g}: expected values >= 0"
            )
        if not 0.0 <= self.equalise <= 1.0:
            raise InvalidConfigError(f"deformable equalise {self.equalise:g}: expected 0..1")
        if not -1.0 <= self.min_agreement <= 1.0:
            raise InvalidConfigError(f"deformable min agreement {self.min_agreement:g}: expected -1..1")
        if self.iterations < 0:
            raise InvalidConfigError(f"deformable iterations {self.iterations}: expected >= 0")
        if self.grid_spacing_mm < self.feature_spacing_mm or self.step_mm > self.capture_mm:
            raise InvalidConfigError(
                f"deformable grid spacing {self.grid_spacing_mm:g} mm needs to be at least the feature "
                f"spacing {self.feature_spacing_mm:g} mm, and the step {self.step_mm:g} mm at most the "
                f"capture range {self.capture_mm:g} mm"
            )
