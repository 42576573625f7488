"""Training pairs for descriptor learning, made by synthesis: an MRI and a synthetic ultrasound of it
under a known motion, both on working grids, with corresponding points (matching by synthesis).

Points are where the keypoint detector fires on the synthetic ultrasound (drawn in proportion to
saliency, so repeated draws cover the modality-consistent locations) plus uniformly drawn points in
the cone, mapped to the MRI by the exact transform. Everything is seeded by the pair's index, so a
pair is the same whichever worker, process or run makes it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from crossreg.errors import CrossregError, EmptyRegionError
from crossreg.features.crosskey import CrossKeyConfig, network_input
from crossreg.image import Image
from crossreg.keypoints import KeypointConfig, detect_keypoints
from crossreg.resample import grid_coords, working_image
from crossreg.synth.cases import make_case
from crossreg.synth.elastic import random_elastic
from crossreg.synth.modality import random_lut, t2_like

MAX_ATTEMPTS = 10
#: A training source: a real MRI (T1) and its grey/white matter maps (or None: classes from intensity).
Source = tuple[Image, dict[str, Image] | None]


@dataclass(frozen=True)
class PairConfig:
    """How training pairs (an MRI and a synthetic ultrasound of it under a known motion) are drawn."""

    # Isotropic grid, mm, descriptors are learned on: registration's working grid for a brain (see
    # crossreg.plan.working_spacing).
    working_spacing_mm: float = 2.0
    # Rotation curriculum: pair i is rotated by an angle drawn in [0, a_i] degrees, a_i growing linearly
    # from start_angle_deg to max_angle_deg over curriculum_pairs pairs (a count per rank, as the pairs
    # per step are: the training loop scales it by the number of DDP ranks).
    start_angle_deg: float = 5.0
    max_angle_deg: float = 30.0
    curriculum_pairs: int = 2000
    max_translation_mm: float = 15.0  # the centre's shift, mm, is drawn in [0, this], random direction
    # What the MRI side shows, drawn uniformly: "t1" (the source), "t2" (T2-like), "random" (random LUT);
    # repeat a name to weight it.
    fixed_contrasts: tuple[str, ...] = ("t1",)
    # Largest displacement, mm, of a random elastic warp of the source (new anatomies); 0: no warp.
    elastic_mm: float = 0.0
    n_uniform: int = 256  # points drawn uniformly in the cone besides the keypoints (at least 1 is used)
    # MRI points drawn uniformly over its field of view: the brain-wide negatives of the "bank" loss.
    n_bank: int = 4096
    # More bank points per corresponding point, each at a distance in near_mm (a (min, max) range, mm)
    # from it in a random direction: the neighbours a dense grid of candidates puts next to the right
    # one, which a brain-wide bank rarely samples (hard negatives for precise matches; see
    # docs/benchmarks.md).
    n_near: int = 4
    near_mm: tuple[float, float] = (3.0, 10.0)
    # The detector on the ultrasound: max_keypoints points per pair, drawn by saliency (no grid).
    keypoints: KeypointConfig = field(
        default_factory=lambda: KeypointConfig(
            sampling="probabilistic", border_mm=4.0, max_keypoints=192, min_keypoints=0
        )
    )

    def angle_deg(self, index: int) -> float:
        """Largest rotation of pair ``index``: the rotation curriculum."""
        progress = min(index / max(self.curriculum_pairs, 1), 1.0)
        return self.start_angle_deg + progress * (self.max_angle_deg - self.start_angle_deg)


@dataclass(frozen=True, eq=False)
class TrainingPair:
    """One example: network inputs ``(1, 2, *S)`` of the MRI and the ultrasound, grid_sample
    coordinates ``(N, d)`` of the N corresponding points in each, and their MRI world positions
    ``(N, d)`` mm (for choosing negatives by distance); ``bank_coords`` ``(M, d)`` and ``bank_mm``
    ``(M, d)``: more MRI points, drawn over its whole field of view."""

    fixed_input: torch.Tensor
    moving_input: torch.Tensor
    fixed_coords: torch.Tensor
    moving_coords: torch.Tensor
    positions_mm: torch.Tensor
    bank_coords: torch.Tensor
    bank_mm: torch.Tensor

    def to(self, device: torch.device | str) -> TrainingPair:
        """The pair with every tensor on ``device``."""
        return TrainingPair(*(getattr(self, f.name).to(device) for f in fields(self)))


def _contrast(image: Image, tissues: dict[str, Image] | None, name: str, seed: int) -> Image:
    if name == "t2":
        return t2_like(image, tissues, seed)
    if name == "random":
        return random_lut(image, seed)
    return image


def make_pair(
    sources: Sequence[Source],
    config: PairConfig,
    network: CrossKeyConfig,
    index: int,
    seed: int = 0,
) -> TrainingPair:
    """Training pair number ``index`` of the stream seeded by ``seed``, with inputs for ``network``;
    a draw whose cone misses the brain (no landmark fits) is drawn again from the next sub-seed."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            entropy = np.random.SeedSequence([seed, index, attempt])
            return _draw_pair(sources, config, entropy, index, network)
        except EmptyRegionError:  # the cone holds too little brain to put points in
            continue
    raise CrossregError(f"pair {index}: no usable ultrasound in {MAX_ATTEMPTS} draws; check the sources")


def _draw_pair(
    sources: Sequence[Source],
    config: PairConfig,
    entropy: np.random.SeedSequence,
    index: int,
    network: CrossKeyConfig,
) -> TrainingPair:
    rng = np.random.default_rng(entropy)
    image, tissues = sources[int(rng.integers(len(sources)))]
    if config.elastic_mm > 0:
        warp = random_elastic(image, config.elastic_mm, seed=int(rng.integers(2**31)))
        image = warp.warp(image)
        tissues = None if tissues is None else {k: warp.warp(v) for k, v in tissues.items()}
    angle = float(rng.uniform(0.0, config.angle_deg(index)))
    shift = float(rng.uniform(0.0, config.max_translation_mm))
    n_uniform = max(config.n_uniform, 1)
    case = make_case(
        image, "us", angle, shift, tissues=tissues, n_landmarks=n_uniform, seed=int(rng.integers(2**31))
    )
    contrast = config.fixed_contrasts[int(rng.integers(len(config.fixed_contrasts)))]
    contrast_seed = int(rng.integers(2**31))
    if config.elastic_mm == 0 and contrast == "t1":  # the source itself, as in every such pair
        fixed, fixed_input = _unchanged_mri(case.fixed, config.working_spacing_mm, network)
    else:
        fixed = working_image(
            _contrast(case.fixed, tissues, contrast, contrast_seed), config.working_spacing_mm
        )
        fixed_input = network_input(fixed, network)
    moving = working_image(case.moving, config.working_spacing_mm)
    kps = detect_keypoints(moving, config.keypoints, int(rng.integers(2**31)), moving.valid_mask())
    moving_mm = np.concatenate([kps.points_mm.double().numpy(), case.landmarks_moving_mm])
    fixed_mm = case.true_transform.inverse().apply(moving_mm)
    inside = fixed.grid.contains(fixed_mm)
    fixed_mm, moving_mm = fixed_mm[inside], moving_mm[inside]
    bank_mm = np.concatenate([_bank(fixed, config.n_bank, rng), _near(fixed, fixed_mm, config, rng)])
    return TrainingPair(
        fixed_input,
        network_input(moving, network),
        torch.from_numpy(grid_coords(fixed.grid, fixed_mm)).float(),
        torch.from_numpy(grid_coords(moving.grid, moving_mm)).float(),
        torch.from_numpy(fixed_mm).float(),
        torch.from_numpy(grid_coords(fixed.grid, bank_mm)).float(),
        torch.from_numpy(bank_mm).float(),
    )


#: Per process: a source MRI shown as it is, on its working grid, and its network input (patient
#: training without warps draws the same MRI side for every pair; this halves the cost of a pair).
#: Images hash by identity, so a key holds its source alive and never matches another image.
_UNCHANGED: dict[tuple[Image, float, CrossKeyConfig], tuple[Image, torch.Tensor]] = {}


def _unchanged_mri(image: Image, spacing_mm: float, network: CrossKeyConfig) -> tuple[Image, torch.Tensor]:
    """``image`` on its working grid and its network input, computed once per process."""
    key = (image, spacing_mm, network)
    if key not in _UNCHANGED:
        work = working_image(image, spacing_mm)
        _UNCHANGED[key] = (work, network_input(work, network))
    return _UNCHANGED[key]


def _bank(work: Image, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, d)`` world points drawn uniformly (voxel plus sub-voxel jitter) in a working image's FOV."""
    voxels = np.argwhere(work.valid_mask())
    picked = voxels[rng.integers(len(voxels), size=n)] + rng.uniform(-0.5, 0.5, (n, work.ndim))
    return work.grid.index_to_world(picked[:, ::-1])


def _near(work: Image, points_mm: np.ndarray, config: PairConfig, rng: np.random.Generator) -> np.ndarray:
    """``config.n_near`` world points around each of ``points_mm`` ``(N, d)``, at distances drawn
    uniformly in ``config.near_mm`` in random directions, those inside the working image's grid."""
    centres = np.repeat(points_mm, config.n_near, axis=0)
    direction = rng.normal(size=centres.shape)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    near = centres + direction * rng.uniform(*config.near_mm, size=(len(centres), 1))
    return near[work.grid.contains(near)]


class PairStream(torch.utils.data.IterableDataset):
    """Endless pairs ``start, start + stride, ...`` (a DDP rank's share), split among DataLoader workers."""

    def __init__(
        self,
        sources: Sequence[Source],
        config: PairConfig,
        network: CrossKeyConfig,
        seed: int,
        start: int = 0,
        stride: int = 1,
    ) -> None:
        super().__init__()
        self.sources, self.config, self.seed, self.start, self.stride = sources, config, seed, start, stride
        self.network = network

    def __iter__(self) -> Iterator[TrainingPair]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = self.start + worker * self.stride
        while True:
            yield make_pair(self.sources, self.config, self.network, index, self.seed)
            index += n_workers * self.stride
