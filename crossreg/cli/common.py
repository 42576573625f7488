"""What every ``crossreg`` command shares: consoles, error handling, device checks, option parsing."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

from crossreg.errors import CrossregError

err_console = Console(stderr=True)
console = Console()
F = TypeVar("F", bound=Callable[..., None])


def friendly_errors(command: F) -> F:
    """Turn library errors into one line on stderr and an exit code (traceback only with CROSSREG_DEBUG=1)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CrossregError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: no output was written for unfinished steps", highlight=False)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:
            if os.environ.get("CROSSREG_DEBUG"):
                raise
            err_console.print(
                f"[bold red]internal error:[/] {type(err).__name__}: {err} "
                "(set CROSSREG_DEBUG=1 for a traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def check_device(device: str) -> None:
    """Raise CrossregError unless ``device`` is ``cpu`` or an available ``cuda[:N]``."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CrossregError("--device cuda asked for, but torch sees no CUDA GPU here; use --device cpu")
    if not device.startswith(("cpu", "cuda")):
        raise CrossregError(f"--device {device}: expected cpu or cuda")


def parse_list(text: str, option: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """``"a,b"`` as ``["a", "b"]``; CrossregError naming ``option`` if empty or not in ``allowed``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CrossregError(f"{option}: give at least one value")
    unknown = [t for t in items if allowed is not None and t not in allowed]
    if unknown:
        raise CrossregError(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(allowed or ())}")
    return items


def parse_floats(text: str, option: str, count: tuple[int, ...]) -> tuple[float, ...]:
    """``"1.5,1.5,3"`` as floats; CrossregError naming ``option`` unless there are ``count`` positive ones."""
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise CrossregError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if len(values) not in count or not all(v > 0 for v in values):
        raise CrossregError(
            f"{option}: expected {' or '.join(map(str, count))} positive numbers, got {text!r}"
        )
    return values
