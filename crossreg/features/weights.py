"""Weights files of crossreg's networks: fp16 tensors, the architecture config and a meta card, written
atomically, read back into the network they describe with one clear error for anything else."""

from __future__ import annotations

from dataclasses import asdict, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossreg.errors import CrossregError
from crossreg.outputs import atomic_write

FORMAT_VERSION = 1


class ModelLoadError(CrossregError):
    """A weights file is missing, unreadable, or not a crossreg model of the expected kind."""


def save_weights(path: str | Path, net: nn.Module, kind: str, meta: dict) -> None:
    """Write ``net`` (fp16 weights, its ``config`` dataclass, ``kind`` and ``meta``: data, command,
    metrics) atomically."""
    state = {k: v.detach().cpu().half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    payload = {"format": FORMAT_VERSION, "kind": kind, "config": asdict(net.config), "state_dict": state}
    atomic_write(path, lambda tmp: torch.save({**payload, "meta": meta}, tmp))


def shipped_weights(name: str) -> Path:
    """A weights file shipped inside the package (``crossreg/features/weights``)."""
    return Path(str(resources.files("crossreg.features") / "weights" / name))


def load_weights(
    path: Path, kind: str, config_type: type, net_type: type[nn.Module], device: str = "cpu"
) -> tuple[Any, dict]:
    """The ``net_type`` network in ``path`` (built from its stored ``config_type`` config), in eval mode
    on ``device``, and its meta. Raises ModelLoadError for a missing, corrupt or foreign file."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such weights file (train one with `crossreg train`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or non-torch file
        raise ModelLoadError(
            f"{path}: not a readable weights file (torch cannot load it: {type(err).__name__}); re-copy it "
            "or train one with `crossreg train`"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ModelLoadError(f"{path}: not a crossreg {kind} model (format {FORMAT_VERSION} expected)")
    stored_kind = payload.get("kind", "crosskey")  # files written before kinds were recorded
    if stored_kind != kind:
        raise ModelLoadError(f"{path}: a {stored_kind} model, not a {kind} model: pass the right file")
    try:
        stored = payload["config"]
        tuples = {f.name for f in fields(config_type) if isinstance(stored.get(f.name), list)}
        net = net_type(config_type(**{k: tuple(v) if k in tuples else v for k, v in stored.items()}))
        state = {k: v.float() for k, v in payload["state_dict"].items()}
        misfit = _misfit(net.state_dict(), state)
        if not misfit:
            net.load_state_dict(state)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        misfit = str(err).splitlines()[0] if str(err) else type(err).__name__
    if misfit:
        raise ModelLoadError(
            f"{path}: weights do not fit the {kind} network its config describes ({misfit}); the file "
            "was altered or written by other code: retrain it with `crossreg train`"
        )
    return net.to(device).eval(), dict(payload.get("meta", {}))


def _misfit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """How ``state`` differs from a network's ``expected`` state dict, in a few words ("" if it fits)."""
    shaped = sum(expected[k].shape != state[k].shape for k in expected.keys() & state.keys())
    counts = {
        "of another shape": shaped,
        "missing": len(expected.keys() - state.keys()),
        "unexpected": len(state.keys() - expected.keys()),
    }
    found = [f"{n} {what}" for what, n in counts.items() if n]
    return "tensors: " + ", ".join(found) if found else ""
