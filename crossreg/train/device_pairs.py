"""Training pairs made on the training device: anatomy, MRI contrast, ultrasound, keypoints and network
inputs are tensors on the GPU from start to end, so a training step waits for no CPU worker.

The pairs are those of :mod:`crossreg.train.data` (an MRI and a synthetic ultrasound of it, rotated,
with corresponding points and brain-wide and near negatives), made differently in three ways:

- **Anatomy.** Each anatomy is a source MRI as it is or a synthetic subject of it: a random
  diffeomorphism and affine of :mod:`crossreg.synth.diffeo` (global, regional or atrophy-like), with
  the source's real T1 intensities and tissue fractions carried through the warp.
- **Sharing.** One anatomy, with its MRI contrast (T1, T2-like painted from the warped tissues, or a
  random non-monotonic look-up table), serves ``cones_per_anatomy`` consecutive pairs. Each pair has
  its own probe pose, acoustic parameters, rotation and speckle, so each is a distinct pair. The
  MRI side's network input is computed once for all of them, and the training loop runs it through
  the network once per step.
- **Geometry.** The ultrasound is scan-converted straight onto a rotated 2 mm grid around its cone:
  one interpolation, not two. The network sees that grid's array, as it sees a working grid's.

Everything is seeded by the pair's index; a pair is the same on every run on the same device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from crossreg.errors import CrossregError, EmptyRegionError
from crossreg.features.crosskey import CrossKeyConfig, network_input_tensor
from crossreg.filters import erode
from crossreg.image import Grid, Image, axis_aligned_grid, fov_mask, fov_mask_tensor, robust_normalize_tensor
from crossreg.keypoints import saliency_tensor, salient_maxima
from crossreg.resample import grid_coords, grid_index, grid_points_mm, sample_world
from crossreg.synth.beam import Beam, surface_poses, tilt
from crossreg.synth.diffeo import FAMILIES, DeformationConfig, Family, random_deformation
from crossreg.synth.geometry import rotation_about_axis
from crossreg.synth.modality import random_lut_curve
from crossreg.synth.subjects import AppearanceConfig, class_means
from crossreg.synth.ultrasound import (
    UltrasoundConfig,
    beam_for,
    envelope,
    log_compress,
    scan_convert_tensor,
    tissue_volumes,
)
from crossreg.train.data import MAX_ATTEMPTS, PairConfig, Source, TrainingPair

TISSUES = ("csf", "gm", "wm")
MIN_POINTS = 16  # a cone with fewer corresponding points inside the MRI grid is drawn again
ANATOMY_MARGIN_MM = 6.0  # the anatomy's grid reaches this far beyond the warped brain


@dataclass(frozen=True)
class DevicePairConfig:
    """How :class:`DevicePairStream` varies the anatomy (on top of :class:`PairConfig`)."""

    cones_per_anatomy: int = 8  # consecutive pairs sharing one anatomy and MRI contrast (>= 1)
    subject_share: float = 0.75  # share (0-1) of anatomies that are synthetic subjects of the source
    families: tuple[Family, ...] = FAMILIES  # their deformation families, one drawn per subject
    deformation: DeformationConfig = field(default_factory=DeformationConfig)
    max_tilt_deg: float = 15.0  # probe tilt away from the surface pose, as probe_pose_on_surface's

    def __post_init__(self) -> None:
        if self.cones_per_anatomy < 1 or not 0.0 <= self.subject_share <= 1.0:
            raise ValueError(f"DevicePairConfig needs cones_per_anatomy >= 1, subject_share 0-1: {self}")


@dataclass(frozen=True, eq=False)
class SourceOnDevice:
    """A source MRI prepared once: robust-normalised T1 and tissue fractions on the device, its
    deformation labels, brain rim points and untilted probe poses (template world mm)."""

    t1: torch.Tensor  # (*grid.shape), 0-1
    fractions: torch.Tensor  # (3, *grid.shape): TISSUES
    grid: Grid
    labels: dict[str, Image]  # csf, gm, wm, nonbrain (zero): what random_deformation warps
    rim_mm: torch.Tensor  # (R, 3) the brain's border voxels
    apexes_mm: np.ndarray  # (K, 3)
    directions: np.ndarray  # (K, 3)


def prepare_source(source: Source, device: torch.device) -> SourceOnDevice:
    """``source`` (a T1 and optional gm/wm maps) as :class:`SourceOnDevice` on ``device``."""
    image, tissues = source
    fractions = tissue_volumes(image, tissues)
    stack = torch.stack([fractions[k] for k in TISSUES])
    brain = fov_mask(image)
    rim = brain & ~erode(torch.from_numpy(brain), 1).numpy()
    rim_mm = image.grid.index_to_world(np.argwhere(rim)[:, ::-1].astype(float))
    labels = {k: Image(v.numpy(), image.grid) for k, v in zip(TISSUES, stack, strict=True)}
    labels["nonbrain"] = Image(np.zeros(image.array.shape, np.float32), image.grid)
    apexes, directions = surface_poses(image)
    t1 = torch.from_numpy(np.ascontiguousarray(image.array, np.float32)).to(device)
    return SourceOnDevice(
        robust_normalize_tensor(t1, torch.ones_like(t1, dtype=torch.bool)),
        stack.to(device),
        image.grid,
        labels,
        torch.from_numpy(rim_mm).to(device),
        apexes,
        directions,
    )


def index_to_world(grid: Grid, index_zyx: torch.Tensor) -> torch.Tensor:
    """World points ``(N, d)`` float64 of array indices ``(N, d)`` (z, y, x order) of ``grid``."""
    m = torch.as_tensor(grid.index_to_world_matrix(), dtype=torch.float64, device=index_zyx.device)
    return index_zyx.double().flip(-1) @ m[:-1, :-1].T + m[:-1, -1]


@dataclass(frozen=True, eq=False)
class Anatomy:
    """One anatomy on its axis-aligned working grid: the MRI side's network input and mask, the tissue
    fractions the ultrasound is simulated from, and the map of source points into it."""

    grid: Grid
    fixed_input: torch.Tensor  # (1, C, *grid.shape)
    valid_index: torch.Tensor  # (V, d) array indices (z, y, x) of the MRI side's mask
    fractions: dict[str, torch.Tensor]  # csf, gm, wm, lesion: (*grid.shape) each
    to_anatomy: Callable[[torch.Tensor], torch.Tensor]  # source world points (N, 3) -> anatomy's
    to_source: Callable[[torch.Tensor], torch.Tensor]  # and back


def _identity(points: torch.Tensor) -> torch.Tensor:
    return points


def make_anatomy(
    source: SourceOnDevice,
    pairs: PairConfig,
    config: DevicePairConfig,
    network: CrossKeyConfig,
    rng: np.random.Generator,
) -> Anatomy:
    """A random :class:`Anatomy` of ``source``: a synthetic subject (``config.subject_share`` of the
    draws) or the source itself, its MRI side in one of ``pairs.fixed_contrasts``."""
    device = source.t1.device
    to_source, to_anatomy = _identity, _identity
    if rng.uniform() < config.subject_share:
        family = config.families[int(rng.integers(len(config.families)))]
        warp = random_deformation(source.labels, family, config.deformation, int(rng.integers(2**31)), device)
        to_source, to_anatomy = warp.template_points, warp.subject_points
    rim = to_anatomy(source.rim_mm).cpu().numpy()
    corners = np.stack([rim.min(axis=0) - ANATOMY_MARGIN_MM, rim.max(axis=0) + ANATOMY_MARGIN_MM])
    grid = axis_aligned_grid(corners, pairs.working_spacing_mm)
    at = to_source(grid_points_mm(grid, device, torch.float64)).float()
    ones = torch.ones((1, *source.grid.shape), device=device)
    values = sample_world(torch.cat([source.t1[None], source.fractions, ones]), source.grid, at)
    t1, fractions, covered = values[0], values[1:4], values[4] > 0.999
    contrast = pairs.fixed_contrasts[int(rng.integers(len(pairs.fixed_contrasts)))]
    shown = _contrast(t1, fractions, contrast, rng)
    work = robust_normalize_tensor(shown, covered)
    mask = fov_mask_tensor(work, covered, grid.spacing_mm)
    return Anatomy(
        grid,
        network_input_tensor(work, mask, grid, network),
        mask.nonzero(),
        {**dict(zip(TISSUES, fractions, strict=True)), "lesion": torch.zeros_like(t1)},
        to_anatomy,
        to_source,
    )


def _contrast(t1: torch.Tensor, fractions: torch.Tensor, name: str, rng: np.random.Generator) -> torch.Tensor:
    """The MRI side: ``t1`` itself, a T2-like painting of the tissue ``fractions`` ``(3, *S)`` (CSF
    bright, grey matter mid, white dark, each class's mean drawn as synthetic subjects' are), or
    ``t1`` through a random non-monotonic look-up table (:func:`random_lut_curve`)."""
    if name == "t2":
        means = class_means("t2", rng, AppearanceConfig())
        mu = torch.tensor([means[k] for k in TISSUES], device=t1.device)
        return torch.einsum("k...,k->...", fractions, mu)
    if name == "random":
        _, curve = random_lut_curve(int(rng.integers(2**31)))
        lut = torch.as_tensor(curve, dtype=t1.dtype, device=t1.device)
        return lut[(t1.clamp(0.0, 1.0) * (len(curve) - 1)).round().long()]
    if name == "t1":
        return t1
    raise ValueError(f"unknown MRI contrast {name!r}; use 't1', 't2' or 'random'")


def moving_grid(beam: Beam, rotation: np.ndarray, spacing_mm: float, jitter: np.ndarray) -> Grid:
    """A grid of direction ``rotation`` and isotropic ``spacing_mm`` covering ``beam``'s field of view,
    its origin moved back by ``jitter`` ``(3,)`` mm (a random sub-voxel phase)."""
    outline = Beam(beam.probe, beam.apex_mm, beam.basis, beam.half_width, beam.depth_mm, (9, 9, 9))
    local = outline.samples_mm()[0].reshape(-1, 3).double().numpy() @ rotation
    lo, hi = local.min(axis=0) - jitter, local.max(axis=0)
    shape_xyz = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
    return Grid(tuple(int(n) for n in shape_xyz[::-1]), (spacing_mm,) * 3, tuple(rotation @ lo), rotation)


def make_cone(
    anatomy: Anatomy,
    source: SourceOnDevice,
    pairs: PairConfig,
    config: DevicePairConfig,
    network: CrossKeyConfig,
    index: int,
    rng: np.random.Generator,
) -> tuple[TrainingPair, Grid]:
    """Pair number ``index``: a synthetic ultrasound cone of ``anatomy`` on a rotated grid (also
    returned), its keypoints and uniform points, and their MRI partners and negatives. Raises
    EmptyRegionError when the cone holds too few points."""
    device = anatomy.fixed_input.device
    pick = int(rng.integers(len(source.apexes_mm)))
    ends = np.stack([source.apexes_mm[pick], source.apexes_mm[pick] + 10.0 * source.directions[pick]])
    ends = anatomy.to_anatomy(torch.as_tensor(ends, device=device)).double().cpu().numpy()
    axis = ends[1] - ends[0]
    direction = tilt(axis / np.linalg.norm(axis), rng.uniform(0.0, config.max_tilt_deg), rng)
    us = UltrasoundConfig.sample(int(rng.integers(2**31)))
    beam = beam_for(us, ends[0], direction, anatomy.grid)
    turn = rng.standard_normal(3)
    angle = math.radians(rng.uniform(0.0, pairs.angle_deg(index)))
    spacing = pairs.working_spacing_mm
    grid = moving_grid(
        beam, rotation_about_axis(turn / np.linalg.norm(turn), angle), spacing, rng.uniform(0, spacing, 3)
    )
    generator = torch.Generator(device).manual_seed(int(rng.integers(2**31)))
    with torch.no_grad():
        brightness = log_compress(envelope(anatomy.fractions, anatomy.grid, us, beam, generator), us)
        array, inside = scan_convert_tensor(beam, brightness, grid)
    # Features see the array as a working grid's: world axes along the array's.
    aligned = Grid(grid.shape, grid.spacing_mm, (0.0, 0.0, 0.0), np.eye(3))
    work = robust_normalize_tensor(array, inside)
    mask = fov_mask_tensor(work, inside, aligned.spacing_mm)
    spacing_zyx = (spacing,) * 3
    saliency = saliency_tensor(work, mask, spacing_zyx, pairs.keypoints)
    keypoints, _ = salient_maxima(saliency, mask, spacing_zyx, pairs.keypoints, int(rng.integers(2**31)))
    interior = erode(mask, 2).nonzero()
    if len(interior) == 0:
        raise EmptyRegionError("the cone holds no brain")
    draw = torch.randint(len(interior), (max(pairs.n_uniform, 1),), generator=generator, device=device)
    jitter = torch.rand((len(draw), 3), generator=generator, device=device) - 0.5
    moving_mm = index_to_world(grid, torch.cat([keypoints.double(), interior[draw] + jitter.double()]))
    inside_fixed = _inside(anatomy.grid, moving_mm)
    fixed_mm = moving_mm[inside_fixed]
    if len(fixed_mm) < MIN_POINTS:
        raise EmptyRegionError(f"{len(fixed_mm)} corresponding points in the cone")
    bank_mm = torch.cat(
        [_bank(anatomy, pairs.n_bank, generator), _near(anatomy.grid, fixed_mm, pairs, generator)]
    )
    pair = TrainingPair(
        anatomy.fixed_input,
        network_input_tensor(work, mask, aligned, network),
        grid_coords(anatomy.grid, fixed_mm).float(),
        grid_coords(grid, fixed_mm).float(),
        fixed_mm.float(),
        grid_coords(anatomy.grid, bank_mm).float(),
        bank_mm.float(),
    )
    return pair, grid


def _inside(grid: Grid, points_mm: torch.Tensor) -> torch.Tensor:
    """Bool ``(N,)``: which world points lie within ``grid``'s voxel centres."""
    index = grid_index(grid, points_mm)
    size = torch.as_tensor(grid.size_xyz - 1, dtype=index.dtype, device=index.device)
    return ((index >= 0) & (index <= size)).all(dim=1)


def _bank(anatomy: Anatomy, n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 3)`` world points drawn uniformly (voxel plus sub-voxel jitter) in the MRI side's mask."""
    device = anatomy.valid_index.device
    picked = anatomy.valid_index[
        torch.randint(len(anatomy.valid_index), (n,), generator=generator, device=device)
    ]
    return index_to_world(anatomy.grid, picked + torch.rand((n, 3), generator=generator, device=device) - 0.5)


def _near(grid: Grid, points_mm: torch.Tensor, pairs: PairConfig, generator: torch.Generator) -> torch.Tensor:
    """``pairs.n_near`` world points around each of ``points_mm`` ``(N, 3)``, at distances drawn in
    ``pairs.near_mm`` in random directions, those inside ``grid``."""
    centres = points_mm.repeat_interleave(pairs.n_near, dim=0)
    direction = torch.randn(centres.shape, generator=generator, device=centres.device, dtype=centres.dtype)
    lo, hi = pairs.near_mm
    length = lo + (hi - lo) * torch.rand((len(centres), 1), generator=generator, device=centres.device)
    near = centres + torch.nn.functional.normalize(direction, dim=1) * length
    return near[_inside(grid, near)]


class DevicePairStream(torch.utils.data.IterableDataset):
    """Endless pairs ``start, start + stride, ...`` made on ``device``, in lists of
    ``config.cones_per_anatomy`` consecutive ones; pair ``i`` belongs to anatomy
    ``i // config.cones_per_anatomy``. Under a DataLoader of N workers (spawned processes, each making
    its lists on the device), worker ``w`` makes lists ``w, w + N, ...``: the loader hands them over in
    order, so the pairs are the same for any N."""

    def __init__(
        self,
        sources: Sequence[Source],
        pairs: PairConfig,
        config: DevicePairConfig,
        network: CrossKeyConfig,
        seed: int,
        start: int = 0,
        stride: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.sources, self.device = list(sources), torch.device(device)
        self.pairs, self.config, self.network, self.seed = pairs, config, network, seed
        self.start, self.stride = start, stride
        self._prepared: list[SourceOnDevice] | None = None  # made in the process that uses them
        self._anatomy: tuple[int, Anatomy, SourceOnDevice] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_prepared": None, "_anatomy": None}

    def anatomy(self, number: int) -> tuple[Anatomy, SourceOnDevice]:
        """Anatomy ``number`` of the stream and its source (the last one is kept)."""
        if self._prepared is None:
            self._prepared = [prepare_source(s, self.device) for s in self.sources]
        if self._anatomy is None or self._anatomy[0] != number:
            rng = np.random.default_rng([self.seed, number, 1])
            source = self._prepared[int(rng.integers(len(self._prepared)))]
            self._anatomy = (number, make_anatomy(source, self.pairs, self.config, self.network, rng), source)
        return self._anatomy[1], self._anatomy[2]

    def pair(self, index: int) -> TrainingPair:
        """Pair ``index``; a cone with too few points is drawn again from the next sub-seed."""
        anatomy, source = self.anatomy(index // self.config.cones_per_anatomy)
        for attempt in range(MAX_ATTEMPTS):
            rng = np.random.default_rng([self.seed, index, 2, attempt])
            try:
                return make_cone(anatomy, source, self.pairs, self.config, self.network, index, rng)[0]
            except EmptyRegionError:
                continue
        raise CrossregError(f"pair {index}: no usable ultrasound in {MAX_ATTEMPTS} draws; check the sources")

    def __iter__(self) -> Iterator[list[TrainingPair]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        size = self.config.cones_per_anatomy
        chunk = worker
        while True:
            first = self.start + chunk * size * self.stride
            yield [self.pair(first + k * self.stride) for k in range(size)]
            chunk += n_workers
