"""Checkpoints (model, optimiser, random generator, step) written atomically and resumed exactly, and
the learning-rate schedule, shared by crossreg's training loops."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from crossreg.outputs import atomic_write

log = logging.getLogger(__name__)


def cosine_lr(peak: float, progress: float) -> float:
    """The learning rate at ``progress`` (0 at the first step, 1 at the last): a cosine from ``peak``
    down to 0.05 x ``peak``."""
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(
    path: Path, net: torch.nn.Module, optimiser: torch.optim.Optimizer, generator: torch.Generator, step: int
) -> None:
    """Write what resumes a run at ``step`` to ``path``, atomically."""
    state = {
        "model": net.state_dict(),
        "optimiser": optimiser.state_dict(),
        "generator": generator.get_state(),
        "step": step,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: Path, net: torch.nn.Module, optimiser: torch.optim.Optimizer, generator: torch.Generator
) -> int:
    """Load ``path`` into the model, optimiser and generator; the step it was saved at (0 if absent)."""
    if not path.is_file():
        log.info("no checkpoint at %s: starting from step 0", path)
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    generator.set_state(state["generator"])
    return int(state["step"])
