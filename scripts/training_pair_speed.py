"""What bounds CrossKEY training: making pairs on the CPU, or the optimiser steps on the device.

    python scripts/training_pair_speed.py [--preset patient|general] [--n 10]
    python scripts/training_pair_speed.py --preset patient --workers 15 --device cuda --n 64
    python scripts/training_pair_speed.py --preset general --synthesis device --device cuda --n 64

Always: seconds per pair (synthesis of the pair and its network inputs) on one CPU thread. With
``--workers N``: pairs per second delivered by N DataLoader workers, as the training loop gets them
(shared-memory transfer included). With ``--device``: seconds per pair of the training step alone
(forward, loss, backward of one pair made beforehand, repeated), so the three rates say which one a
training run waits for. With ``--synthesis device``: seconds per anatomy and per cone made on
``--device`` (:mod:`crossreg.train.device_pairs`), the training step of one anatomy's pairs, and the
profiler's table of the cones' most expensive operations. The first pair or step of each measurement
is made before timing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from crossreg.features.crosskey import DescriptorNet
from crossreg.train.data import PairStream, TrainingPair, make_pair
from crossreg.train.device_pairs import make_anatomy, make_cone, prepare_source
from crossreg.train.loop import TrainConfig, _Encoder, _pair_loss
from crossreg.train.presets import (
    general_config,
    general_device_config,
    general_sources,
    patient_config,
    patient_device_config,
)


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


def step_seconds(config: TrainConfig, pairs: list[TrainingPair], device: str, n: int) -> float:
    """Seconds per pair of forward, loss and backward on ``device`` for ``pairs`` made beforehand
    (those sharing an MRI-side tensor run it once, as the training loop does)."""
    dev = torch.device(device)
    net = _Encoder(DescriptorNet(config.network).to(dev))
    pairs = [p.to(dev) for p in pairs]
    generator = torch.Generator().manual_seed(0)

    def one() -> None:
        fixed_maps = None
        for k, pair in enumerate(pairs):
            if k == 0 or pair.fixed_input is not pairs[k - 1].fixed_input:
                fixed_maps = net(pair.fixed_input)
            loss, _ = _pair_loss(net, pair, fixed_maps, 1.0, config, generator)
            loss.backward(retain_graph=k + 1 < len(pairs))

    one()
    _sync(dev)
    start = time.perf_counter()
    for _ in range(n):
        one()
    _sync(dev)
    return (time.perf_counter() - start) / (n * len(pairs))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_synthesis(config: TrainConfig, device: str, n: int) -> None:
    """Print seconds per anatomy and per cone made on ``device``, the training step per pair of one
    anatomy's ``config.pairs_per_step`` pairs, and the cones' profile."""
    dev = torch.device(device)
    source = prepare_source(general_sources()[0], dev)
    rng = np.random.default_rng(0)

    def anatomy():
        return make_anatomy(source, config.pairs, config.device_pairs, config.network, rng)

    def cones(body, count: int) -> list[TrainingPair]:
        made = (
            make_cone(body, source, config.pairs, config.device_pairs, config.network, 10**6, rng)
            for _ in range(count)
        )
        return [pair for pair, _ in made]

    body = anatomy()
    cones(body, 2)
    _sync(dev)
    start = time.perf_counter()
    bodies = [anatomy() for _ in range(max(n // 8, 1))]
    _sync(dev)
    per_anatomy = (time.perf_counter() - start) / len(bodies)
    start = time.perf_counter()
    made = cones(body, n)
    _sync(dev)
    per_cone = (time.perf_counter() - start) / n
    print(f"device synthesis on {device}: {per_anatomy:.3f} s per anatomy, {per_cone * 1000:.0f} ms per cone")
    step = step_seconds(config, made[: config.pairs_per_step], device, 5)
    print(f"training step: {step * 1000:.0f} ms per pair ({config.pairs_per_step} pairs of one anatomy)")
    with torch.profiler.profile() as prof:
        cones(body, 8)
        _sync(dev)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("patient", "general"), default="patient")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="also measure a DataLoader of N workers")
    parser.add_argument("--device", default=None, help="also time the training step on this device")
    parser.add_argument("--synthesis", choices=("workers", "device"), default="workers")
    args = parser.parse_args()
    if args.synthesis == "device":
        config = patient_device_config() if args.preset == "patient" else general_device_config()
        device_synthesis(config, args.device or "cpu", args.n)
        return
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
        pair = make_pair(sources, config.pairs, config.network, 0)
        seconds = step_seconds(config, [pair], args.device, args.n)
        print(f"{args.preset}: {seconds * 1000:.0f} ms per pair of training step on {args.device}")


if __name__ == "__main__":
    main()
