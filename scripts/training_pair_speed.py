"""Seconds per CrossKEY training pair (synthesis of the pair and its network inputs) on one CPU thread.

    python scripts/training_pair_speed.py [--preset patient|general] [--n 10]

What bounds training on a GPU machine: the pairs are made by CPU workers (crossreg.train.data), so a
GPU step of 8 pairs waits for 8 of these. The first pair is made before timing (caches, allocator).
"""

from __future__ import annotations

import argparse
import time

import torch

from crossreg.train.data import make_pair
from crossreg.train.presets import general_config, general_sources, patient_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("patient", "general"), default="patient")
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = patient_config() if args.preset == "patient" else general_config()
    sources = general_sources()  # the shipped MNI152 T1: the patient of the patient preset too
    make_pair(sources, config.pairs, config.network, 0)
    start = time.perf_counter()
    for index in range(1, args.n + 1):
        make_pair(sources, config.pairs, config.network, index)
    seconds = (time.perf_counter() - start) / args.n
    print(f"{args.preset}: {seconds:.2f} s per pair ({args.n} pairs, 1 thread)")


if __name__ == "__main__":
    main()
