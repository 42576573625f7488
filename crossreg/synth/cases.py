"""Cross-modal registration cases with exact ground truth: an image, a synthetic other modality of it
moved by a known rigid transform, and corresponding landmarks.

``Case.true_transform`` follows crossreg's convention (fixed points -> moving points), so
``SimpleITK.Resample(moving, fixed, to_sitk(case.true_transform))`` brings the moving image back onto
the fixed one, and ``landmarks_moving_mm == true_transform.apply(landmarks_fixed_mm)``.

With a ``shift`` (:mod:`crossreg.synth.brainshift`: brain shift under a craniotomy, a resection
cavity, soft-tissue deformation) the tissue moves before the modality is synthesised, so the truth
is nonlinear: a :class:`crossreg.deformation.DeformableTransform` whose linear part is the rigid
motion (what a perfect rigid registration finds) and whose field is the tissue's displacement on a
grid over the fixed image. Its landmarks lie where the tissue moved, never in the cavity.

With a ``family`` (2D only) the modality is re-rendered by one of the 2D matcher's modality families
(:func:`crossreg.synth.modality.family_like`: gradient lines, emission-like counts, ...), which brings
its own noise in place of the acquisition corruption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from crossreg.deformation import DeformableTransform
from crossreg.filters import erode
from crossreg.image import Image, crop_to_mask, fov_mask
from crossreg.resample import grid_points_mm
from crossreg.synth.brainshift import Shift, ShiftConfig, ShiftKind, random_shift
from crossreg.synth.geometry import apply_slab, move, random_rigid, random_slab, sample_landmarks
from crossreg.synth.intraop import shifted_anatomy
from crossreg.synth.modality import CorruptionConfig, corrupt, ct_like, family_like, random_lut, t2_like
from crossreg.synth.ultrasound import random_ultrasound
from crossreg.transform import AffineTransform

CaseKind = Literal["t2", "ct", "random", "same", "us"]
DEFAULT_CORRUPTION = CorruptionConfig()
DEFAULT_SHIFT = ShiftConfig()


@dataclass(frozen=True, eq=False)
class Case:
    """One registration problem with its answer.

    fixed: the original image. moving: ``modality`` moved by the rigid motion onto its own grid.
    true_transform: fixed world mm -> moving world mm (rigid, or with a shift a DeformableTransform
    whose ``linear`` is the rigid motion). landmarks_fixed_mm, landmarks_moving_mm: ``(N, d)``
    corresponding world points. modality: the moving image's content before the rigid motion, on (a
    grid covering) the fixed image's grid (with a shift: the shifted tissue, what a perfect rigid
    registration shows). shift: the tissue's motion in the fixed frame, or None.
    """

    fixed: Image
    moving: Image
    true_transform: AffineTransform | DeformableTransform
    landmarks_fixed_mm: np.ndarray
    landmarks_moving_mm: np.ndarray
    name: str
    kind: CaseKind
    modality: Image
    shift: Shift | None = None


def synthesize(
    image: Image,
    kind: CaseKind,
    tissues: dict[str, Image] | None = None,
    seed: int = 0,
    pose: tuple[np.ndarray, np.ndarray] | None = None,
) -> Image:
    """The other-modality version of ``image`` (a T1 for ``t2``/``ct``/``us``) before corruption and motion.

    ``us``: a B-mode ultrasound from a random probe pose on the brain surface (or ``pose``: apex and
    inward direction) with random acoustic parameters
    (:func:`crossreg.synth.ultrasound.random_ultrasound`); its mask is the probe's cone.
    """
    if kind == "t2":
        return t2_like(image, tissues, seed)
    if kind == "ct":
        return ct_like(image, tissues, seed)
    if kind == "random":
        return random_lut(image, seed)
    if kind == "same":
        return image
    if kind == "us":
        return random_ultrasound(image, tissues, seed, pose)
    raise ValueError(f"unknown case kind {kind!r}; use 't2', 'ct', 'random', 'same' or 'us'")


def make_case(
    image: Image,
    kind: CaseKind = "t2",
    angle_deg: float = 15.0,
    translation_mm: float = 15.0,
    fov_fraction: float = 1.0,
    moving_spacing_mm: tuple[float, ...] | None = None,
    tissues: dict[str, Image] | None = None,
    corruption: CorruptionConfig | None = DEFAULT_CORRUPTION,
    n_landmarks: int = 20,
    seed: int = 0,
    slab_normal: np.ndarray | None = None,
    shift: Sequence[ShiftKind] = (),
    shift_config: ShiftConfig = DEFAULT_SHIFT,
    family: str | None = None,
) -> Case:
    """A case: ``image`` as fixed, its ``kind`` modality moved by a random rigid transform as moving.

    The rotation is exactly ``angle_deg`` (random axis, about the fixed grid centre) and the centre
    moves exactly ``translation_mm``. ``fov_fraction`` < 1 keeps a random slab holding that fraction
    of the signal in the moving image, across ``slab_normal`` (a world direction; random if None);
    ``moving_spacing_mm`` (ITK order, e.g. ``(1.5, 1.5, 3)``)
    re-grids it anisotropically; ``corruption`` (None for none) adds blur, bias field and noise (for CT:
    no bias, Gaussian noise at a sixth of the MR level; for ultrasound: none, the simulation has its
    own speckle, noise and gain). Landmarks lie inside the fixed signal and the moving field of view.
    An ultrasound moving image is cut to the box around its cone, as scanners store it.
    ``shift`` (kinds of :mod:`crossreg.synth.brainshift`, e.g. ``("sag", "resect")``) moves the tissue
    first (an ultrasound probe then sits in the craniotomy); landmarks then lie where the tissue moved
    at least ``shift_config.landmark_min_mm``, away from any cavity: up to ``n_landmarks``, fewer when
    little moved tissue is in view.
    ``family`` (2D only; e.g. ``"edges"`` with kind ``same``) re-renders the modality by that family of
    :data:`crossreg.matcher2d.families.FAMILIES`, with its own noise instead of ``corruption``; a
    family's probe field of view, if it has one, bounds the landmarks.
    """
    # A prefix of the same seed sequence: a seventh seed leaves the other six, and every case, as they were.
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(7)]
    moved = random_shift(image, shift, shift_config, seeds[5]) if shift else None
    source, maps, pose = image, tissues, None
    if moved is not None:
        source, maps = shifted_anatomy(image, tissues, moved, ultrasound=kind == "us")
        pose = (moved.apply(moved.craniotomy_mm[None])[0], moved.inward)  # on the shifted surface
    modality = synthesize(source, kind, maps, seeds[0], pose)
    if family is not None:
        modality = family_like(modality, family, seeds[6])
    elif corruption is not None and kind != "us":
        if kind == "ct":  # CT has no bias field, and its noise (~5 HU) is small next to bone (~1500 HU)
            noise = tuple(s / 6.0 for s in corruption.noise_sigma)
            corruption = replace(corruption, bias_strength=(0.0, 0.0), noise_sigma=noise, rician=False)
        modality = corrupt(modality, corruption, seeds[1])
    has_fov = kind == "us" or family is not None
    region = fov_mask(source) & modality.valid_mask() if has_fov else fov_mask(source)
    if fov_fraction < 1.0:
        slab = random_slab(source, fov_fraction, seeds[2], slab_normal)
        modality = apply_slab(modality, slab)
        region &= slab.mask(image.grid)
    rigid = random_rigid(image.ndim, angle_deg, translation_mm, image.grid.center_mm(), seeds[3])
    moving = move(modality, rigid, moving_spacing_mm)
    if kind == "us":
        moving = crop_to_mask(moving, margin_vox=2)
    # Two voxels of margin keep landmarks clear of the FOV edge, where interpolation mixes in zeros.
    region = erode(torch.from_numpy(region), 2).numpy()
    truth = rigid if moved is None else moved.transform(rigid)
    if moved is not None:
        region = _moved_tissue(image, moved, region, shift_config.landmark_min_mm)
    landmarks = sample_landmarks(image, n_landmarks, seeds[4], mask=region, at_most=moved is not None)
    fov = f"-fov{fov_fraction:g}" if fov_fraction < 1.0 else ""
    aniso = "-sp" + "x".join(f"{s:g}" for s in moving_spacing_mm) if moving_spacing_mm else ""
    shifted = "-" + "+".join(moved.magnitudes_mm) if moved is not None else ""
    look = kind if family is None else f"family-{family}" if kind == "same" else f"{kind}-family-{family}"
    name = f"{look}{shifted}-{angle_deg:g}deg-{translation_mm:g}mm{fov}{aniso}-seed{seed}"
    return Case(image, moving, truth, landmarks, truth.apply(landmarks), name, kind, modality, moved)


def _moved_tissue(image: Image, shift: Shift, region: np.ndarray, min_mm: float) -> np.ndarray:
    """Fixed-frame voxels of ``image`` whose tissue is in ``region`` (shifted frame) once moved, had
    signal before, moved at least ``min_mm`` and lies over a voxel (and any rim) from the cavity."""
    points = grid_points_mm(image.grid).double().reshape(-1, image.ndim).numpy()
    moved = shift.apply(points)
    far = ~shift.in_cavity(moved, shift.rim_mm + max(image.spacing_mm))
    enough = np.linalg.norm(moved - points, axis=1) >= min_mm
    keep = (far & enough).reshape(image.array.shape)
    return shift.pull_mask(region, image.grid) & fov_mask(image) & keep
