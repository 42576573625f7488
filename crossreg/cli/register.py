"""``crossreg register`` and ``crossreg demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from crossreg.cli.app import app
from crossreg.cli.common import check_device, console, friendly_errors
from crossreg.config import MATCHING, MIN_AGREEMENT
from crossreg.deformable.config import DeformableConfig
from crossreg.estimate import MODELS
from crossreg.features import FEATURES

# Choices read from the registries: a kind added there is an option value here.
ModelName = Literal[MODELS]  # type: ignore[valid-type]
FeatureName = Literal[tuple(FEATURES)]  # type: ignore[valid-type]
MatchingName = Literal[MATCHING]  # type: ignore[valid-type]


@app.command()
@friendly_errors
def register(
    fixed: Annotated[
        Path, typer.Argument(help="Fixed (reference) image: NIfTI, NRRD, MHA, PNG/TIFF or DICOM dir.")
    ],
    moving: Annotated[Path, typer.Argument(help="Moving image, same dimensionality as FIXED.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Transform to write, mapping FIXED points to MOVING points: ITK .tfm; with --model "
            "homography T.json (the 3 x 3 matrix), plus the displacement field T_field.nii.gz beside it; "
            "with --deformable T.h5, plus T_field.nii.gz.",
        ),
    ],
    resampled: Annotated[
        Path | None, typer.Option(help="Also write MOVING resampled onto the FIXED grid (e.g. R.nii.gz).")
    ] = None,
    qa: Annotated[
        Path | None, typer.Option(help="Also write a QA figure (PNG): fusion before/after, zoomed.")
    ] = None,
    matches: Annotated[
        Path | None,
        typer.Option(help="Also write matches as CSV (world mm, LPS) plus Slicer *_fixed/_moving.mrk.json."),
    ] = None,
    model: Annotated[
        ModelName, typer.Option(help="Transform family; homography (2D only): a projective transform.")
    ] = "rigid",
    features: Annotated[
        FeatureName,
        typer.Option(help="Descriptors: mind (any modality pair) or crosskey (learned, MRI <-> ultrasound)."),
    ] = "mind",
    weights: Annotated[
        Path | None,
        typer.Option(help="CrossKEY model file from `crossreg train` (default: the shipped one)."),
    ] = None,
    matching: Annotated[
        MatchingName,
        typer.Option(
            help="dense: a grid over the smaller image (e.g. an ultrasound cone) against a grid over the "
            "larger; sparse: keypoints on both; matcher2d (2D only): the pretrained matcher network; "
            "descriptors: dense for crosskey, and for mind where one field of view is under a quarter of "
            "the other, else sparse; auto: for 2D images the matcher network first (where a model is "
            "shipped or given), then descriptors if its answer is refused; descriptors otherwise."
        ),
    ] = "auto",
    matcher_weights: Annotated[
        Path | None,
        typer.Option(help="Matcher model from `crossreg train matcher` (default: the shipped one)."),
    ] = None,
    refine: Annotated[bool, typer.Option(help="Intensity refinement (MIND-SSD) after RANSAC.")] = True,
    deformable: Annotated[
        bool,
        typer.Option(
            "--deformable",
            help="Then a deformable stage (ConvexAdam-style: MIND-SSC and the rigid stage's matches): --out "
            "must be T.h5 (ITK composite: linear + displacement field); T_field.nii.gz (the total "
            "displacement field) goes beside it.",
        ),
    ] = False,
    deformable_weight: Annotated[
        float, typer.Option(help="Deformable: regularisation weight (larger: smoother, smaller field).")
    ] = DeformableConfig.weight,
    grid_spacing: Annotated[
        float, typer.Option(help="Deformable: node spacing of the discrete search, mm.")
    ] = DeformableConfig.grid_spacing_mm,
    min_confidence: Annotated[
        float, typer.Option(help="Refuse (exit 3) a transform less confident than this (0..1).")
    ] = 0.5,
    min_agreement: Annotated[
        float,
        typer.Option(help="Refuse (exit 3) a transform under which the images agree less (-1..1; -1: off)."),
    ] = MIN_AGREEMENT,
    device: Annotated[str, typer.Option(help="Torch device: cpu or cuda.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed for keypoint sampling and RANSAC.")] = 0,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing outputs.")] = False,
) -> None:
    """Register MOVING to FIXED with no manual initialisation; write the fixed->moving transform."""
    from crossreg.config import Matcher2dSettings, RegisterConfig
    from crossreg.imageio import SAVE_SUFFIXES, load
    from crossreg.outputs import check_outputs, check_suffix
    from crossreg.refine import RefineConfig
    from crossreg.register import register as run_register
    from crossreg.result_files import check_transform_path, companion_paths, transform_files
    from crossreg.viz import qa_suffixes

    companions = companion_paths(matches) if matches else []
    check_transform_path(out, model, deformable)
    check_outputs([*transform_files(out, model, deformable), resampled, qa, matches, *companions], force)
    check_suffix(qa, qa_suffixes(), "figure")
    check_device(device)
    config = RegisterConfig(
        model=model,
        features=features,
        weights=None if weights is None else str(weights),
        matching=matching,
        matcher2d=Matcher2dSettings(weights=None if matcher_weights is None else str(matcher_weights)),
        refine=RefineConfig() if refine else None,
        deformable=DeformableConfig(weight=deformable_weight, grid_spacing_mm=grid_spacing)
        if deformable
        else None,
        min_confidence=min_confidence,
        min_agreement=min_agreement,
        device=device,
        seed=seed,
    )
    fixed_img, moving_img = load(fixed), load(moving)
    check_suffix(resampled, SAVE_SUFFIXES[fixed_img.ndim], f"{fixed_img.ndim}D image")
    with console.status("registering") as status:
        result = run_register(fixed_img, moving_img, config, on_stage=lambda s: status.update(s))
    written = result.save(out, resampled, qa, matches)
    console.print(result.summary(), highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)


@app.command()
@friendly_errors
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the demo's inputs and outputs.")
    ] = Path("demo"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic motion and field of view.")] = 0,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing outputs.")] = False,
) -> None:
    """Register the shipped MNI152 T1 to a T2-like, partial-FOV, anisotropic copy under a 15 deg / 15 mm
    motion; print the target registration error against the known truth and write every file."""
    from crossreg.demo import run_demo

    with console.status("demo") as status:
        report = run_demo(out, seed=seed, force=force, on_stage=lambda s: status.update(s))
    console.print(report.table())
