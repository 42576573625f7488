"""The two ways to train CrossKEY descriptors, as configurations: patient-specific and general."""

from __future__ import annotations

from dataclasses import replace

from crossreg import datasets
from crossreg.image import Image
from crossreg.synth.geometry import resample_anisotropic
from crossreg.train.data import PairConfig, Source
from crossreg.train.device_pairs import DevicePairConfig
from crossreg.train.loop import TrainConfig

SOURCE_MM = 2.0


def patient_config(steps: int = 800, seed: int = 0, workers: int = 0) -> TrainConfig:
    """Synthetic ultrasound of one patient's T1 only: no anatomy changes, the MRI as it is. Each batch
    of pairs serves 4 steps (data echoing; why and what it gained: docs/benchmarks.md)."""
    return batching(TrainConfig(steps=steps, seed=seed, workers=workers), echo=4)


def general_config(steps: int = 1300, seed: int = 0, workers: int = 0) -> TrainConfig:
    """Every real MRI available, warped elastically into new anatomies, its MRI side shown as T1,
    T2-like or a random contrast, so the descriptors carry to other brains and MR sequences. Each
    batch of pairs serves 6 steps: the recipe of the shipped weights (their model card,
    crossreg/features/weights/crosskey_general_v2.md)."""
    pairs = PairConfig(fixed_contrasts=("t1", "t1", "t2", "random"), elastic_mm=6.0)
    return batching(TrainConfig(steps=steps, seed=seed, workers=workers, pairs=pairs), echo=6)


def patient_device_config(steps: int = 800, seed: int = 0, workers: int = 0) -> TrainConfig:
    """:func:`patient_config` with pairs made on the training device: the patient's T1 as it is (no
    synthetic subjects), a new cone for every pair (no echoing)."""
    device_pairs = DevicePairConfig(subject_share=0.0)
    return batching(
        TrainConfig(steps=steps, seed=seed, synthesis="device", device_pairs=device_pairs), echo=1
    )


def general_device_config(steps: int = 2400, seed: int = 0, workers: int = 0) -> TrainConfig:
    """General descriptors from pairs made on the training device (the v3 recipe): three anatomies in
    four are synthetic subjects of the source (global, regional or atrophy-like diffeomorphisms plus an
    affine), the MRI side shown as T1, T2-like or a random contrast; each anatomy serves the 8 pairs of
    one step, and every pair is new (no echoing)."""
    pairs = PairConfig(fixed_contrasts=("t1", "t1", "t2", "random"))
    config = TrainConfig(steps=steps, seed=seed, workers=workers, synthesis="device", pairs=pairs)
    return batching(config, echo=1)


def batching(config: TrainConfig, pairs_per_step: int | None = None, echo: int | None = None) -> TrainConfig:
    """``config`` with ``pairs_per_step`` and ``echo`` (the preset's where None), its rotation
    curriculum still reaching the largest angle halfway through the distinct pairs."""
    pairs_per_step = config.pairs_per_step if pairs_per_step is None else pairs_per_step
    echo = config.echo if echo is None else echo
    distinct = config.steps * pairs_per_step // echo
    pairs = replace(config.pairs, curriculum_pairs=max(distinct // 2, 1))
    return replace(config, pairs_per_step=pairs_per_step, echo=echo, pairs=pairs)


def general_sources() -> list[Source]:
    """Real MRI shipped with crossreg: the MNI152 2009a T1 (2 mm) with its tissue maps."""
    return [(datasets.mni152_t1(2), datasets.mni152_tissues(2))]


def patient_sources(t1: Image, tissues: dict[str, Image] | None = None) -> list[Source]:
    """One patient's T1 (and grey/white matter maps if segmented), at no finer than ``SOURCE_MM``:
    descriptors are learned on ~2 mm working grids, and synthesis on finer voxels only costs time."""
    spacing = tuple(max(s, SOURCE_MM) for s in t1.spacing_mm)
    return [(t1 if spacing == t1.spacing_mm else resample_anisotropic(t1, spacing), tissues)]
