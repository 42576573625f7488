"""The typer application every ``crossreg`` command registers on."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain: "[bench]" is an extra, not markup
    no_args_is_help=True,
    help="Cross-modal registration: find corresponding anatomy and register MRI, ultrasound, CT (2D/3D).",
)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log diagnostics.")] = False) -> None:
    import SimpleITK as sitk

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    # ITK's reader warnings are C++ diagnostics that would break the one-line error promise; the
    # conditions that matter are checked and reported by crossreg.imageio itself.
    sitk.ProcessObject.SetGlobalWarningDisplay(verbose)
