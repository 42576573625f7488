"""What bounds CrossKEY training: making pairs on the CPU, or the optimiser steps on the device.

    python scripts/training_pair_speed.py [--preset patient|general] [--n 10]
    python scripts/training_pair_speed.py --preset patient --workers 15 --device cuda --n 64

Always: seconds per pair (synthesis of the pair and its network inputs) on one CPU thread. With
``--workers N``: pairs per second delivered by N DataLoader workers, as the training loop gets them
(shared-memory transfer included). With ``--device``: seconds per pair of the training step alone
(forward, loss, backward of one pair made beforehand, repeated), so the three rates say which one a
training run waits for. The first pair or step of each measurement is made before timing.
"""

from __future__ import annotations

import argparse
import time

import torch

from crossreg.features.crosskey import DescriptorNet
from crossreg.train.data import PairStream, make_pair
from crossreg.train.loop import TrainConfig, _Encoder, _pair_loss
from crossreg.train.presets import general_config, general_sources, patient_config


def loader_rate(config: TrainConfig, workers: int, n: int) -> float:
    """Pairs per second out of a DataLoader with ``workers`` processes, after the first ``workers``."""
    stream = PairStream(general_sources(), config.pairs, config.network, config.seed)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    pairs = iter(loader)
    for _ in range(workers):
        next(pairs)
    start = time.perf_counter()
    for _ in range(n):
        next(pairs)
    return n / (time.perf_counter() - start)


def step_seconds(config: TrainConfig, device: str, n: int) -> float:
    """Seconds per pair of forward, loss and backward on ``device``, for one pair made beforehand."""
    dev = torch.device(device)
    net = _Encoder(DescriptorNet(config.network).to(dev))
    pair = make_pair(general_sources(), config.pairs, config.network, 0).to(dev)
    generator = torch.Generator().manual_seed(0)

    def one() -> None:
        loss, _ = _pair_loss(net, pair, 1.0, config, generator)
        loss.backward()

    one()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        one()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("patient", "general"), default="patient")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="also measure a DataLoader of N workers")
    parser.add_argument("--device", default=None, help="also time the training step on this device")
    args = parser.parse_args()
    config = patient_config() if args.preset == "patient" else general_config()
    sources = general_sources()  # the shipped MNI152 T1: the patient of the patient preset too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    make_pair(sources, config.pairs, config.network, 0)
    start = time.perf_counter()
    for index in range(1, args.n + 1):
        make_pair(sources, config.pairs, config.network, index)
    seconds = (time.perf_counter() - start) / args.n
    print(f"{args.preset}: {seconds:.2f} s per pair ({args.n} pairs, 1 thread)", flush=True)
    torch.set_num_threads(threads)
    if args.workers:
        rate = loader_rate(config, args.workers, args.n)
        print(f"{args.preset}: {rate:.1f} pairs/s from {args.workers} DataLoader workers", flush=True)
    if args.device:
        seconds = step_seconds(config, args.device, args.n)
        print(f"{args.preset}: {seconds * 1000:.0f} ms per pair of training step on {args.device}")


if __name__ == "__main__":
    main()
