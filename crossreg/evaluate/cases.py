"""Benchmark cases: synthetic cross-modal pairs made from the shipped MRI, and real pairs from folders.

A case is a fixed image, a moving image and corresponding landmarks in both (world mm, LPS). The
target registration error of a transform ``T`` (fixed -> moving) is ``|T(p_fixed) - p_moving|`` per
landmark pair, so synthetic cases (exact truth) and real ones (annotated landmarks) are scored alike.

Folder layout read by :func:`folder_cases` (one folder per case; what
``crossreg.synth.pairs.write_pair`` writes)::

    root/
      case-01/
        fixed.nii.gz        any format crossreg.imageio.load reads (a DICOM folder named ``fixed`` too)
        moving.nrrd
        landmarks.csv       fixed_x,fixed_y,fixed_z,moving_x,moving_y,moving_z  (world mm, LPS)
      case-02/
        fixed.mha
        moving.mha
        landmarks_fixed.mrk.json, landmarks_moving.mrk.json   (3D Slicer markups, paired in order)
        true_transform.tfm  optional: the exact fixed -> moving transform (synthetic pairs), which
                            lets the benchmark score matching precision too; true_transform.h5 for
                            a nonlinear one (a pair with a tissue shift)

2D cases have no ``*_z`` columns. Other columns of landmarks.csv (``id``, ``label``) are ignored.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import get_args

import numpy as np

from crossreg import datasets
from crossreg.deformation import DeformableTransform
from crossreg.errors import CrossregError
from crossreg.evaluate.cone_variants import CONE_VARIANTS
from crossreg.image import Image, crop_to_mask
from crossreg.imageio import load
from crossreg.markups import read_markups_json, read_matches_csv
from crossreg.matcher2d.families import FAMILIES
from crossreg.resample import resample
from crossreg.synth.brainshift import ShiftKind
from crossreg.synth.cases import Case, CaseKind, make_case
from crossreg.synth.geometry import extract_slice
from crossreg.transform import AffineTransform, read_transform

#: Landmarks further than this (in voxels) outside their image cannot have been annotated on it:
#: usually RAS coordinates given as LPS, or fixed and moving columns swapped.
LANDMARK_MARGIN_VOX = 2.0


@dataclass(frozen=True)
class FovKind:
    """A benchmark kind made by a :func:`crossreg.synth.cases.make_case` kind with a field of view of
    its own: a slab holding a fraction of the head drawn from ``fov_range``, across the last world axis
    (3D: an axial slab) if ``axial``, else across a random direction."""

    modality: CaseKind
    fov_range: tuple[float, float]
    axial: bool = False


#: ``slab``: a thin axial T2-like MR slab (15-25% of the head) against the whole-head T1.
FOV_KINDS: dict[str, FovKind] = {"slab": FovKind("t2", (0.15, 0.25), axial=True)}


@dataclass(frozen=True)
class ShiftBenchKind:
    """A benchmark kind made by a :func:`crossreg.synth.cases.make_case` kind after a tissue shift
    (:mod:`crossreg.synth.brainshift`), its components drawn per case from ``choices``; the moving
    image covers the whole head (ultrasound: the probe's cone, at the craniotomy)."""

    modality: CaseKind
    choices: tuple[tuple[ShiftKind, ...], ...]


#: ``us-shift``: intraoperative ultrasound after brain shift (a sag; two times in three with a
#: resection cavity, and then half the time a swelling too); ``t2-shift``, ``ct-shift``: MR and CT
#: with a localised soft-tissue deformation. Their truth is nonlinear: a perfect rigid registration
#: leaves a TRE of a few mm.
SHIFT_BENCH_KINDS: dict[str, ShiftBenchKind] = {
    "us-shift": ShiftBenchKind("us", (("sag",), ("sag", "resect"), ("sag", "swell", "resect"))),
    "t2-shift": ShiftBenchKind("t2", (("soft",),)),
    "ct-shift": ShiftBenchKind("ct", (("soft",),)),
}
#: ``us-fine`` (3D only): the ultrasound cone at an intraoperative scanner's resolution, isotropic voxels
#: drawn from this range (mm), against the shipped 1 mm MRI; ``us`` uses the 2 mm MRI and grid.
FINE_KINDS: dict[str, tuple[float, float]] = {"us-fine": (0.6, 0.9)}
#: ``family-<name>`` (2D only): the slice rendered by a modality family of the 2D matcher's training
#: pairs (:mod:`crossreg.matcher2d.families`; ``edges`` and ``emission`` were held out of its training),
#: as the moving image: kind ``same`` of :func:`crossreg.synth.cases.make_case` with that ``family``.
FAMILY_KINDS: dict[str, str] = {f"family-{name}": name for name in FAMILIES}
#: Every synthetic kind of the benchmark; the cone variants (:mod:`crossreg.evaluate.cone_variants`) last.
BENCH_KINDS: tuple[str, ...] = (
    *get_args(CaseKind),
    *FOV_KINDS,
    *SHIFT_BENCH_KINDS,
    *FINE_KINDS,
    *FAMILY_KINDS,
    *CONE_VARIANTS,
)


@dataclass(frozen=True, eq=False)
class BenchCase:
    """One registration problem of a benchmark.

    true_transform: fixed world mm -> moving world mm (rigid or, with a tissue shift, deformable), or
    None for real data (landmarks only).
    landmarks_fixed_mm, landmarks_moving_mm: ``(N, d)`` corresponding world points, LPS.
    negative: a known negative (:mod:`crossreg.evaluate.cone_variants`): no transform is right, so a
    refusal is the success and any transform returned is a wrong answer, whatever its TRE.
    """

    name: str
    kind: str
    fixed: Image
    moving: Image
    true_transform: AffineTransform | DeformableTransform | None
    landmarks_fixed_mm: np.ndarray
    landmarks_moving_mm: np.ndarray
    negative: bool = False

    def __post_init__(self) -> None:
        pf, pm = self.landmarks_fixed_mm, self.landmarks_moving_mm
        d = self.fixed.ndim
        if pf.ndim != 2 or pf.shape != pm.shape or pf.shape[1] != d or len(pf) == 0:
            raise CrossregError(
                f"case {self.name}: landmarks must be two (N, {d}) arrays with N >= 1; "
                f"got {pf.shape} fixed and {pm.shape} moving"
            )

    @property
    def ndim(self) -> int:
        return self.fixed.ndim

    def landmark_errors_mm(self, transform: AffineTransform | DeformableTransform) -> np.ndarray:
        """``(N,)`` ``|T(p_fixed) - p_moving|`` of ``transform`` (fixed -> moving) at each landmark pair,
        mm: its target registration error (the mean is the case's TRE)."""
        return np.linalg.norm(transform.apply(self.landmarks_fixed_mm) - self.landmarks_moving_mm, axis=1)


# ---------------------------------------------------------------- synthetic cases


def _sources(ndim: int, resolution_mm: int = 2) -> list[tuple[Image, dict[str, Image]]]:
    """Every shipped real image of dimension ``ndim`` with its tissue maps, at ``resolution_mm`` (the
    tissue maps, shipped at 2 mm, resampled onto a finer MRI's grid)."""
    t1, tissues = datasets.mni152_t1(resolution_mm), datasets.mni152_tissues(2)
    tissues = {k: resample(v, t1.grid) for k, v in tissues.items()} if resolution_mm != 2 else tissues
    if ndim == 3:
        return [(t1, tissues)]
    if ndim != 2:
        raise ValueError(f"synthetic_cases: ndim must be 2 or 3, got {ndim}")
    axes = ("axial", "coronal", "sagittal")
    return [(extract_slice(t1, a), {k: extract_slice(v, a) for k, v in tissues.items()}) for a in axes]


def synthetic_cases(
    kinds: Sequence[str] = ("t2", "ct", "random"),
    n_per_kind: int = 10,
    seed: int = 0,
    ndim: int = 3,
    angle_deg: float = 15.0,
    translation_mm: float = 15.0,
    fov_range: tuple[float, float] = (0.3, 0.8),
    max_anisotropy: float = 2.0,
) -> list[BenchCase]:
    """``n_per_kind`` cases per kind from the shipped MNI152 T1 (2 mm; its three middle slices in 2D;
    1 mm for :data:`FINE_KINDS`).

    Each kind is a :func:`crossreg.synth.cases.make_case` kind (``t2``, ``ct``, ``random``, ``same``,
    and any kind added there), one of :data:`FOV_KINDS`, of :data:`FINE_KINDS` (isotropic voxels of
    their own), of :data:`SHIFT_BENCH_KINDS` (whole head,
    nonlinear truth), in 2D one of :data:`FAMILY_KINDS`, or a cone variant of
    :data:`~crossreg.evaluate.cone_variants.CONE_VARIANTS` (known negatives; a cone of another head).
    Every case rotates by exactly ``angle_deg``
    and shifts by exactly ``translation_mm``; its moving image keeps a random slab with a fraction of
    the signal drawn from ``fov_range`` (:data:`FOV_KINDS`: their own slabs; ultrasound: the probe's
    cone instead) and has one random axis coarsened by a factor drawn from
    ``[1, max_anisotropy]``.
    Case ``i`` of a kind depends only on ``(seed, kind, ndim, i)``: adding kinds changes no other case.
    """
    if ndim != 2 and (flat := [k for k in kinds if k in FAMILY_KINDS]):
        raise CrossregError(
            f"kinds {', '.join(flat)} are 2D only (the 2D matcher's modality families): use ndim=2 (--ndim 2)"
        )
    if ndim != 3 and (fine := [k for k in kinds if k in FINE_KINDS]):
        raise CrossregError(f"kinds {', '.join(fine)} are 3D only (ultrasound volumes): use ndim=3")
    sources = _sources(ndim)
    cases = []
    for kind in kinds:
        shifted, family = SHIFT_BENCH_KINDS.get(kind), FAMILY_KINDS.get(kind)
        variant, fine_spacing = CONE_VARIANTS.get(kind), FINE_KINDS.get(kind)
        modality = (
            shifted.modality if shifted else "same" if family else "us" if variant or fine_spacing else kind
        )
        special = FOV_KINDS.get(kind, FovKind(modality, fov_range))
        normal = np.eye(ndim)[-1] if special.axial else None
        kind_sources = _sources(ndim, 1) if fine_spacing else sources
        for i in range(n_per_kind):
            entropy = [seed, zlib.crc32(kind.encode()), ndim, i]
            rng = np.random.default_rng(np.random.SeedSequence(entropy))
            image, tissues = kind_sources[i % len(kind_sources)]
            fov = round(float(rng.uniform(*special.fov_range)), 2)
            spacing = np.array(image.spacing_mm)
            spacing[rng.integers(ndim)] *= rng.uniform(1.0, max_anisotropy)
            if fine_spacing:
                spacing = np.full(ndim, rng.uniform(*fine_spacing))
            case_seed = int(rng.integers(2**31))
            shift = shifted.choices[rng.integers(len(shifted.choices))] if shifted else ()
            build = partial(
                make_case,
                kind=special.modality,
                angle_deg=angle_deg,
                translation_mm=translation_mm,
                # The probe's cone is an ultrasound's FOV; a shift case keeps the moved tissue in view.
                fov_fraction=fov if special.modality != "us" and not shifted else 1.0,
                moving_spacing_mm=tuple(float(s) for s in np.round(spacing, 2)),
                seed=case_seed,
                slab_normal=normal,
                shift=shift,
                family=family,
            )
            case = (
                variant.make(build, image, tissues, case_seed) if variant else build(image, tissues=tissues)
            )
            label = case.name if case.name.startswith(f"{kind}-") else f"{kind}-{case.name}"
            cases.append(
                _from_synthetic(
                    case, f"{ndim}d-{i:02d}-{label}", kind, variant is not None and variant.negative
                )
            )
    return cases


def _from_synthetic(case: Case, name: str, kind: str, negative: bool) -> BenchCase:
    moving = crop_to_mask(case.moving)
    pf, pm = case.landmarks_fixed_mm, case.landmarks_moving_mm
    return BenchCase(name, kind, case.fixed, moving, case.true_transform, pf, pm, negative)


# ---------------------------------------------------------------- real cases from folders


def folder_cases(root: str | Path, kind: str | None = None) -> list[BenchCase]:
    """The cases in ``root``, one per sub-folder (or ``root`` itself if it is a case folder).

    Layout in the module docstring. ``kind`` (the name of ``root`` if None) groups the cases in the
    report, e.g. ``RESECT``. Raises CrossregError naming the folder and what is wrong with it.
    """
    root = Path(root)
    if not root.is_dir():
        raise CrossregError(
            f"{root}: not a folder; expected a folder of case folders (fixed, moving, landmarks)"
        )
    kind = kind or root.resolve().name
    if _image_path(root, "fixed", required=False) is not None:
        return [read_case_folder(root, kind)]
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise CrossregError(
            f"{root}: no case folders; each case needs a folder with fixed.*, moving.*, landmarks.csv"
        )
    return [read_case_folder(folder, kind) for folder in folders]


def read_case_folder(folder: Path, kind: str) -> BenchCase:
    """One case from a folder holding ``fixed.*``, ``moving.*`` and landmarks (module docstring)."""
    fixed = load(_image_path(folder, "fixed"))
    moving = load(_image_path(folder, "moving"))
    if fixed.ndim != moving.ndim:
        raise CrossregError(f"{folder}: fixed image is {fixed.ndim}D but moving image is {moving.ndim}D")
    pf, pm = _read_landmarks(folder, fixed.ndim)
    for side, image, pts in (("fixed", fixed, pf), ("moving", moving, pm)):
        outside = ~image.grid.contains(pts, margin_vox=LANDMARK_MARGIN_VOX)
        if outside.any():
            raise CrossregError(
                f"{folder}: {outside.sum()} of {len(pts)} {side} landmarks lie outside the {side} image "
                f"(first: {np.round(pts[outside][0], 1).tolist()} mm); landmarks must be world mm in LPS "
                "(negate x and y of RAS coordinates)"
            )
    rigid_path, deformable_path = folder / "true_transform.tfm", folder / "true_transform.h5"
    truth = None
    if deformable_path.is_file():
        truth = DeformableTransform.read(deformable_path)
    elif rigid_path.is_file():
        truth = read_transform(rigid_path)
    return BenchCase(folder.name, kind, fixed, moving, truth, pf, pm)


def _image_path(folder: Path, stem: str, required: bool = True) -> Path | None:
    """The one entry of ``folder`` named ``stem`` or ``stem.<extension>``."""
    found = sorted(p for p in folder.iterdir() if p.name == stem or p.name.startswith(f"{stem}."))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise CrossregError(f"{folder}: {len(found)} candidate {stem} images ({names}); keep one")
    if not found and required:
        raise CrossregError(f"{folder}: no {stem} image; expected a file {stem}.<ext> (e.g. {stem}.nii.gz)")
    return found[0] if found else None


def _read_landmarks(folder: Path, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired landmarks ``(N, ndim)`` fixed and moving: landmarks.csv, else the pair of .mrk.json files
    (``crossreg synth pair`` writes both, with the same points)."""
    csv_path = folder / "landmarks.csv"
    mrk = [folder / f"landmarks_{side}.mrk.json" for side in ("fixed", "moving")]
    has_mrk = [p.is_file() for p in mrk]
    if csv_path.is_file():
        pf, pm, _ = read_matches_csv(csv_path)
        source = csv_path.name
    elif all(has_mrk):
        (pf, _), (pm, _) = (read_markups_json(p) for p in mrk)
        if len(pf) != len(pm):
            raise CrossregError(
                f"{folder}: {len(pf)} fixed but {len(pm)} moving landmarks; they pair in order"
            )
        pf, pm = _planar(folder, pf, ndim), _planar(folder, pm, ndim)
        source = "landmarks_*.mrk.json"
    else:
        raise CrossregError(
            f"{folder}: no landmarks; expected landmarks.csv (columns fixed_x,fixed_y,fixed_z,"
            "moving_x,moving_y,moving_z) or landmarks_fixed.mrk.json + landmarks_moving.mrk.json"
        )
    if pf.shape[1] != ndim:
        raise CrossregError(f"{folder}/{source}: {pf.shape[1]}D landmarks for {ndim}D images")
    return pf, pm


def _planar(folder: Path, points_mm: np.ndarray, ndim: int) -> np.ndarray:
    """Markup points ``(N, 3)`` as ``(N, ndim)``: 2D images take x, y (z must be 0)."""
    if ndim == 3:
        return points_mm
    if np.any(points_mm[:, 2] != 0):
        raise CrossregError(f"{folder}: markups for 2D images must have z = 0")
    return points_mm[:, :2]
