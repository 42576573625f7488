"""``crossreg synth``: synthetic cross-modal pairs with exact ground truth, the docs panel, throughput."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, get_args

import typer

from crossreg.cli.app import app
from crossreg.cli.common import check_device, console, friendly_errors, parse_floats, parse_list
from crossreg.errors import CrossregError
from crossreg.synth.cases import CaseKind

synth_app = typer.Typer(no_args_is_help=True, help="Synthetic cross-modal images with exact ground truth.")
app.add_typer(synth_app, name="synth")
KINDS = get_args(CaseKind)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise CrossregError(f"--kind {kind}: choose one of {', '.join(KINDS)}")


@synth_app.command()
@friendly_errors
def pair(
    image: Annotated[Path, typer.Argument(help="A T1-weighted MRI (any format crossreg reads), 2D or 3D.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the pair into.")],
    kind: Annotated[
        str,
        typer.Option(
            help="Moving modality: us (B-mode ultrasound), t2, ct, random (random tissue LUT), same."
        ),
    ] = "us",
    seed: Annotated[int, typer.Option(help="Seed of everything random: pose, motion, modality, noise.")] = 0,
    angle_deg: Annotated[float, typer.Option(help="Rotation of the true motion (degrees).")] = 15.0,
    translation_mm: Annotated[float, typer.Option(help="Translation of the true motion (mm).")] = 15.0,
    fov: Annotated[
        float, typer.Option(help="Fraction of the signal kept in the moving image (a random slab), 0-1.")
    ] = 1.0,
    spacing: Annotated[
        str | None, typer.Option(help="Moving voxel size in mm, e.g. 2,2,4 (default: the image's).")
    ] = None,
    gm: Annotated[
        Path | None, typer.Option(help="Grey-matter probability map (else from T1 intensity).")
    ] = None,
    wm: Annotated[Path | None, typer.Option(help="White-matter probability map (with --gm).")] = None,
    landmarks: Annotated[int, typer.Option(help="Number of corresponding landmarks to write.")] = 20,
    shift: Annotated[
        str | None,
        typer.Option(
            help="Move the tissue first, comma-separated: sag (gravity under a craniotomy, 2-15 mm), "
            "swell (2-8 mm), resect (a fluid-filled cavity), soft (CT/MR soft tissue, 3-10 mm). "
            "Writes true_transform.h5 (rigid after a displacement field) instead of .tfm."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing outputs.")] = False,
) -> None:
    """Write fixed.nii.gz (IMAGE), moving.nii.gz (its KIND version under a known rigid motion, after a
    tissue shift with --shift), true_transform.tfm (fixed -> moving, as registration outputs; .h5 with
    --shift), landmarks.csv and Slicer markups."""
    from crossreg.imageio import load
    from crossreg.outputs import check_outputs
    from crossreg.synth.brainshift import SHIFT_KINDS
    from crossreg.synth.cases import make_case
    from crossreg.synth.modality import as_probability
    from crossreg.synth.pairs import PAIR_FILES, SHIFT_PAIR_FILES, write_pair

    _check_kind(kind)
    shift_kinds = tuple(parse_list(shift, "--shift", SHIFT_KINDS)) if shift is not None else ()
    if not 0.05 <= fov <= 1.0:
        raise CrossregError(f"--fov {fov}: expected a fraction between 0.05 and 1")
    if (gm is None) != (wm is None):
        raise CrossregError("--gm and --wm go together: give both tissue maps or neither")
    check_outputs([out / name for name in (SHIFT_PAIR_FILES if shift_kinds else PAIR_FILES)], force)
    fixed = load(image)
    moving_spacing = parse_floats(spacing, "--spacing", (fixed.ndim,)) if spacing else None
    tissues = {"gm": as_probability(load(gm)), "wm": as_probability(load(wm))} if gm and wm else None
    with console.status(f"synthesising a {kind} pair"):
        case = make_case(
            fixed,
            kind,
            angle_deg,
            translation_mm,
            fov,
            moving_spacing,
            tissues,
            n_landmarks=landmarks,
            seed=seed,
            shift=shift_kinds,
        )
        paths = write_pair(case, out, force)
    console.print(f"wrote {len(paths)} files to {out}/ ({case.name})", highlight=False)


@synth_app.command()
@friendly_errors
def subject(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the case into.")],
    template: Annotated[
        Path | None, typer.Option(help="Skull-stripped T1 template (default: the shipped MNI152, 2 mm).")
    ] = None,
    gm: Annotated[Path | None, typer.Option(help="Template grey-matter map (with --template).")] = None,
    wm: Annotated[Path | None, typer.Option(help="Template white-matter map (with --template).")] = None,
    contrast: Annotated[str, typer.Option(help="Subject contrast: t1, t2, ct or random.")] = "random",
    family: Annotated[
        str, typer.Option(help="Deformation families to draw from, comma-separated: global,regional,atrophy.")
    ] = "global,regional,atrophy",
    seed: Annotated[int, typer.Option(help="Seed of the subject's shape and look.")] = 0,
    landmarks: Annotated[int, typer.Option(help="Salient template points to carry into the subject.")] = 40,
    device: Annotated[str, typer.Option(help="Torch device: cpu or cuda.")] = "cpu",
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing outputs.")] = False,
) -> None:
    """Write fixed.nii.gz (the template), moving.nii.gz (a synthetic subject: another head shape and
    contrast, drawn from the template's tissues) and landmarks.csv (salient template points and their
    exact places in the subject): a case for `crossreg bench --data`."""
    from crossreg import datasets
    from crossreg.imageio import load
    from crossreg.outputs import check_outputs
    from crossreg.synth.geometry import salient_landmarks
    from crossreg.synth.modality import as_probability
    from crossreg.synth.pairs import SUBJECT_PAIR_FILES, write_subject_pair
    from crossreg.synth.subjects import SubjectConfig, make_subject

    if (template is None) != (gm is None) or (gm is None) != (wm is None):
        raise CrossregError("--template, --gm and --wm go together: give all three or none")
    check_device(device)
    config = SubjectConfig(contrast=contrast, families=tuple(parse_list(family, "--family")))
    check_outputs([out / name for name in SUBJECT_PAIR_FILES], force)
    if template is None:
        t1, tissues = datasets.mni152_t1(2), datasets.mni152_tissues(2)
    else:
        t1, tissues = load(template), {"gm": as_probability(load(gm)), "wm": as_probability(load(wm))}
    if t1.ndim != 3:
        raise CrossregError(f"{template}: a {t1.ndim}D image; synthetic subjects need a 3D template")
    with console.status("drawing a synthetic subject"):
        made = make_subject(t1, tissues, config, seed=seed, device=device)
        points = salient_landmarks(t1, landmarks)
        paths = write_subject_pair(t1, made, points, out, force)
    console.print(
        f"wrote {len(paths)} files to {out}/ ({made.family} deformation, {len(points)} landmarks)",
        highlight=False,
    )


@synth_app.command()
@friendly_errors
def longitudinal(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the case into.")],
    contrast: Annotated[str, typer.Option(help="Baseline contrast: t1, t2, ct or random.")] = "random",
    followup_contrast: Annotated[
        str | None, typer.Option(help="Follow-up contrast: t1, t2, ct or random (default: the baseline's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the head, the lesions, the motion and both looks.")] = 0,
    device: Annotated[str, typer.Option(help="Torch device: cpu or cuda.")] = "cpu",
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing outputs.")] = False,
) -> None:
    """Write baseline.nii.gz (a synthetic subject of the shipped MNI152 with 3-6 lesions), followup.nii.gz
    (the same head later: each lesion grown or shrunk off-centre, the tissue around it pushed, the brain
    changed a little, the head moved, a new look), lesions_baseline.csv and lesions_followup.csv
    (x,y,z,radius,label in LPS mm; the follow-up file is the truth): a case for lesion tracking."""
    from crossreg import datasets
    from crossreg.outputs import check_outputs
    from crossreg.synth.lesions import (
        LONGITUDINAL_FILES,
        FollowupConfig,
        make_longitudinal,
        write_longitudinal,
    )
    from crossreg.synth.subjects import SubjectConfig

    check_device(device)
    subject_config = SubjectConfig(contrast=contrast)
    followup_config = FollowupConfig(contrast=followup_contrast)
    check_outputs([out / name for name in LONGITUDINAL_FILES], force)
    t1, tissues = datasets.mni152_t1(2), datasets.mni152_tissues(2)
    with console.status("drawing a baseline scan with lesions and its follow-up"):
        made = make_longitudinal(t1, tissues, subject_config, followup_config, seed=seed, device=device)
        paths = write_longitudinal(made, out, force)
    console.print(f"wrote {len(paths)} files to {out}/ ({len(made.lesions)} lesions)", highlight=False)


@synth_app.command()
@friendly_errors
def panel(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path(
        "docs/img/synth_us_examples.png"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the probe poses and speckle.")] = 0,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing file.")] = False,
) -> None:
    """Draw the documentation panel: T1 planes beside synthetic ultrasound of the shipped MNI152 brain."""
    from crossreg.outputs import check_outputs
    from crossreg.synth.panel import example_panel

    check_outputs([out], force)
    with console.status("simulating"):
        example_panel(out, seed)
    console.print(f"wrote {out}", highlight=False)


@synth_app.command("shift-panel")
@friendly_errors
def shift_panel(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path(
        "docs/img/synth_shift_examples.png"
    ),
    seed: Annotated[int, typer.Option(help="Seed of both cases.")] = 0,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing file.")] = False,
) -> None:
    """Draw the documentation panel of brain shift: an ultrasound case (sag, cavity) and a CT case
    (soft-tissue deformation) of the shipped MNI152 brain, rigid motion undone."""
    from crossreg.outputs import check_outputs
    from crossreg.synth.shift_panel import shift_panel as draw

    check_outputs([out], force)
    with console.status("simulating"):
        draw(out, seed)
    console.print(f"wrote {out}", highlight=False)


@synth_app.command()
@friendly_errors
def speed(
    kinds: Annotated[str, typer.Option(help="Comma-separated kinds to time.")] = "us,t2,ct,random",
    n: Annotated[int, typer.Option(help="Pairs per kind.")] = 10,
    resolution_mm: Annotated[int, typer.Option(help="Shipped MNI152 T1 at 1 or 2 mm.")] = 2,
) -> None:
    """Time pair synthesis (pairs per second, this machine's CPU) on the shipped MNI152 brain."""
    import torch

    from crossreg import datasets
    from crossreg.synth.cases import make_case

    chosen = parse_list(kinds, "--kinds", KINDS)
    t1, tissues = datasets.mni152_t1(resolution_mm), datasets.mni152_tissues(2)
    console.print(
        f"MNI152 T1 {resolution_mm} mm, {t1.grid.shape[::-1]} voxels, {torch.get_num_threads()} threads"
    )
    for kind in chosen:
        make_case(t1, kind, tissues=tissues, seed=10**6)  # warm-up: caches, allocator
        start = time.perf_counter()
        for seed in range(n):
            make_case(t1, kind, fov_fraction=1.0 if kind == "us" else 0.6, tissues=tissues, seed=seed)
        seconds = (time.perf_counter() - start) / n
        console.print(f"{kind:>7}: {1.0 / seconds:6.2f} pairs/s ({seconds:.2f} s per pair)", highlight=False)
