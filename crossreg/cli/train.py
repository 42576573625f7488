"""``crossreg train patient|general|embedding|matcher``: learn descriptors, embeddings or the 2D matcher."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crossreg.cli.app import app
from crossreg.cli.common import check_device, console, friendly_errors
from crossreg.errors import CrossregError

if TYPE_CHECKING:
    from crossreg.train.loop import TrainConfig

train_app = typer.Typer(
    no_args_is_help=True, help="Train CrossKEY descriptors, anatomical embeddings or the 2D matcher."
)
app.add_typer(train_app, name="train")

Steps = Annotated[int | None, typer.Option(help="Optimiser steps (default: the preset's).")]
Device = Annotated[str, typer.Option(help="cpu or cuda (under torchrun: one GPU per process).")]
Workers = Annotated[
    int,
    typer.Option(
        help="Processes synthesising pairs (0: in the training process); with --synthesis device, "
        "each drives the GPU."
    ),
]
PairsPerStep = Annotated[
    int | None, typer.Option(help="Pairs per optimiser step (per GPU under torchrun; default 8).", min=1)
]
Echo = Annotated[
    int | None,
    typer.Option(
        help="Optimiser steps per batch of synthetic pairs (data echoing: synthesis on the CPU, not the "
        "GPU, bounds training speed; default: the preset's, 4 patient, 6 general).",
        min=1,
    ),
]
Seed = Annotated[int, typer.Option(help="Seed of the network, the pairs and the negatives.")]
Resume = Annotated[bool, typer.Option(help="Continue from OUT.ckpt if it exists.")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing model file.")]
Minutes = Annotated[
    float | None, typer.Option(help="Stop after this many minutes (checkpointed; --resume goes on).")
]
Synthesis = Annotated[
    str,
    typer.Option(
        help="Where pairs are made: 'workers' (CPU processes) or 'device' (on --device itself, the GPU "
        "path; its own preset).",
    ),
]
WarmStart = Annotated[
    Path | None,
    typer.Option(help="Start from this model at the step it was written at, with a fresh optimiser."),
]


def _run(sources, out: Path, config, device: str, resume: bool, force: bool, kind: str) -> None:
    from crossreg.outputs import check_outputs
    from crossreg.train.loop import train

    check_device(device)
    if not resume:
        check_outputs([out], force)
    meta = {"kind": kind, "command": "crossreg " + shlex.join(sys.argv[1:]), "commit": _commit()}
    with console.status(f"training ({config.steps} steps)") as status:

        def show(entry) -> None:
            status.update(
                f"step {entry.step}/{config.steps}: loss {entry.loss:.3f}, hardness {entry.hardness:.2f}, "
                f"max rotation {entry.max_angle_deg:.0f} deg, {entry.seconds:.0f} s"
            )

        train(sources, out, config, device, resume, meta, show)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone writes
        console.print(f"wrote {out} (log: {out.with_suffix('.log.jsonl')})", highlight=False)


def _preset(
    synthesis: str,
    on_workers: Callable[..., TrainConfig],
    on_device: Callable[..., TrainConfig],
    steps: int | None,
    seed: int,
    workers: int,
) -> TrainConfig:
    """The preset of ``--synthesis`` (``on_workers`` or ``on_device``: a preset function taking steps,
    seed and workers) with the preset's steps unless ``steps`` is given."""
    if synthesis not in ("workers", "device"):
        raise CrossregError(f"--synthesis {synthesis!r}: use 'workers' or 'device'")
    make = on_device if synthesis == "device" else on_workers
    return make(seed=seed, workers=workers) if steps is None else make(steps, seed, workers)


def _commit() -> str:
    """The git commit of the code that trained: ``CROSSREG_COMMIT`` if set (a copy of the tree without
    its history), else the checkout's, else ``unknown``."""
    if os.environ.get("CROSSREG_COMMIT"):
        return os.environ["CROSSREG_COMMIT"]
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        )
    except OSError:
        return "unknown"
    return proc.stdout.strip() or "unknown"


@train_app.command()
@friendly_errors
def patient(
    mri: Annotated[Path, typer.Argument(help="The patient's T1-weighted MRI (3D).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (.pt).")],
    gm: Annotated[Path | None, typer.Option(help="Grey-matter probability map (optional).")] = None,
    wm: Annotated[Path | None, typer.Option(help="White-matter probability map (with --gm).")] = None,
    steps: Steps = None,
    pairs_per_step: PairsPerStep = None,
    echo: Echo = None,
    device: Device = "cpu",
    workers: Workers = 0,
    synthesis: Synthesis = "workers",
    seed: Seed = 0,
    resume: Resume = False,
    force: Force = False,
) -> None:
    """Train on synthetic ultrasound of one patient's MRI (random probe poses, artefacts, rotations)."""
    from crossreg.imageio import load
    from crossreg.synth.modality import as_probability
    from crossreg.train.presets import batching, patient_config, patient_device_config, patient_sources

    if (gm is None) != (wm is None):
        raise CrossregError("--gm and --wm go together: give both tissue maps or neither")
    image = load(mri)
    if image.ndim != 3:
        raise CrossregError(f"{mri}: a {image.ndim}D image; patient training needs a 3D MRI")
    tissues = {"gm": as_probability(load(gm)), "wm": as_probability(load(wm))} if gm and wm else None
    config = _preset(synthesis, patient_config, patient_device_config, steps, seed, workers)
    config = batching(config, pairs_per_step, echo)
    _run(patient_sources(image, tissues), out, config, device, resume, force, "patient-specific")


@train_app.command()
@friendly_errors
def general(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (.pt).")],
    steps: Steps = None,
    pairs_per_step: PairsPerStep = None,
    echo: Echo = None,
    device: Device = "cpu",
    workers: Workers = 0,
    synthesis: Synthesis = "workers",
    seed: Seed = 0,
    resume: Resume = False,
    force: Force = False,
) -> None:
    """Train on every real MRI shipped (MNI152), warped into new anatomies, with random MR contrasts."""
    from crossreg.train.presets import batching, general_config, general_device_config, general_sources

    config = _preset(synthesis, general_config, general_device_config, steps, seed, workers)
    config = batching(config, pairs_per_step, echo)
    _run(general_sources(), out, config, device, resume, force, "general")


def _train_with_progress(
    train,
    kind: str,
    out: Path,
    config,
    device: str,
    resume: bool,
    minutes: float | None,
    warm_start: Path | None,
) -> None:
    """Run ``train(out, config, device, resume, meta, on_log, stop_after_s, warm_start)`` (the embedding
    and matcher loops share it) with a status line per logged step and the command and commit in meta."""
    meta = {"kind": kind, "command": "crossreg " + shlex.join(sys.argv[1:]), "commit": _commit()}
    with console.status(f"training ({config.steps} steps)") as status:

        def show(entry) -> None:
            stats = ", ".join(f"{k} {v:.3f}" for k, v in entry.stats.items())
            line = f"step {entry.step}/{config.steps}: loss {entry.loss:.3f} ({stats}), {entry.seconds:.0f} s"
            status.update(line)
            if not console.is_terminal:
                console.print(line)

        train(out, config, device, resume, meta, show, None if minutes is None else 60 * minutes, warm_start)
    console.print(
        f"wrote {out} (log: {out.with_suffix('.log.jsonl')}, checkpoint {out.with_suffix('.ckpt')})"
    )


@train_app.command()
@friendly_errors
def embedding(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (.pt).")],
    steps: Annotated[int, typer.Option(help="Optimiser steps of the whole schedule.", min=1)] = 3200,
    pairs_per_step: Annotated[int, typer.Option(help="Pairs of views per optimiser step.", min=1)] = 4,
    minutes: Minutes = None,
    warm_start: WarmStart = None,
    device: Device = "cpu",
    seed: Seed = 0,
    resume: Resume = False,
    force: Force = False,
) -> None:
    """Train universal anatomical embeddings on synthetic subjects of the shipped MNI152 template (other
    head shapes, random contrasts, partial fields of view); the regional deformation family is held out."""
    from dataclasses import replace

    from crossreg.outputs import check_outputs
    from crossreg.train.embedding import EmbeddingTrainConfig, train_embedding

    check_device(device)
    if not resume:
        check_outputs([out], force)
    config = replace(EmbeddingTrainConfig(), steps=steps, pairs_per_step=pairs_per_step, seed=seed)
    _train_with_progress(train_embedding, "uae", out, config, device, resume, minutes, warm_start)


@train_app.command()
@friendly_errors
def matcher(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (.pt).")],
    steps: Annotated[int, typer.Option(help="Optimiser steps of the whole schedule.", min=1)] = 30000,
    batch: Annotated[int, typer.Option(help="Synthetic pairs per optimiser step.", min=1)] = 16,
    minutes: Minutes = None,
    warm_start: WarmStart = None,
    device: Device = "cpu",
    seed: Seed = 0,
    resume: Resume = False,
    force: Force = False,
) -> None:
    """Train the 2D detector-free matcher on synthetic pairs made on DEVICE (real slices, photographs and
    procedural pictures under random modalities and warps); the edges and emission families are held out."""
    from dataclasses import replace

    from crossreg.outputs import check_outputs
    from crossreg.train.matcher import MatcherTrainConfig, train_matcher

    check_device(device)
    if not resume:
        check_outputs([out], force)
    config = replace(MatcherTrainConfig(), steps=steps, batch=batch, seed=seed)
    _train_with_progress(train_matcher, "matcher2d", out, config, device, resume, minutes, warm_start)
