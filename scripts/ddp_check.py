"""Does training under torchrun (DDP) follow single-process training? Loss curves, weights, speed-up.

    python scripts/ddp_check.py --ranks 2 --steps 3 --pairs 4 --device cpu --out ddp_check/
    python scripts/ddp_check.py --ranks 2 --steps 40 --pairs 8 --device cuda --workers 7 --out $OUT

N ranks drawing ``--pairs`` pairs each per step see exactly the pairs that one process drawing
N x ``--pairs`` sees (crossreg.train.loop deals pair indices out by rank), and DDP averages their
gradients, so the two runs must agree up to floating-point summation order: the same logged loss at
every step and the same weights at the end. The script runs the single process in-process, the DDP
run through ``torchrun --nproc_per_node N`` (this script again, ``--rank-worker``), and writes
``ddp_check.json`` with both loss curves, the largest weight difference and the wall times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from crossreg import datasets
from crossreg.train.loop import TrainConfig, train
from crossreg.train.presets import batching, patient_config, patient_sources


def config(args: argparse.Namespace, pairs_per_step: int) -> TrainConfig:
    """The patient preset, ``args.steps`` steps of ``pairs_per_step`` pairs (per rank, no echoing),
    logged at every step."""
    base = batching(patient_config(args.steps, seed=0, workers=args.workers), pairs_per_step, echo=1)
    return replace(base, log_every=1, checkpoint_every=args.steps)


def sources():
    """The shipped MNI152 T1 (2 mm) and its tissue maps, as ``crossreg train patient`` gets them."""
    return patient_sources(datasets.mni152_t1(2), datasets.mni152_tissues(2))


def losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    """Full-precision weights from a run's checkpoint (the .pt model file holds fp16)."""
    return torch.load(path.with_suffix(".ckpt"), map_location="cpu", weights_only=True)["model"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="DDP processes (GPUs)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step and rank")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("ddp_check"))
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_worker:  # one rank of the DDP run, started by torchrun
        train(sources(), args.out / "ddp.pt", config(args, args.pairs), args.device)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train(sources(), args.out / "single.pt", config(args, args.ranks * args.pairs), args.device)
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={args.ranks}", __file__, "--rank-worker", *sys.argv[1:]]
    subprocess.run(command, check=True)
    ddp_s = time.perf_counter() - start
    a, b = weights(args.out / "single.pt"), weights(args.out / "ddp.pt")
    weight_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    weight_scale = max(float(a[k].abs().max()) for k in a)
    report = {
        "command": "python scripts/ddp_check.py " + " ".join(sys.argv[1:]),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "ranks": args.ranks,
        "pairs_per_step": args.ranks * args.pairs,
        "single_loss": losses(args.out / "single.log.jsonl"),
        "ddp_loss": losses(args.out / "ddp.log.jsonl"),
        "max_weight_difference": weight_diff,
        "max_weight": weight_scale,
        "single_seconds": single_s,
        "ddp_seconds": ddp_s,
        "speed_up": single_s / ddp_s,
    }
    (args.out / "ddp_check.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
