"""Peak memory per pipeline stage when registering two 512^3 volumes on CPU (the numbers in
docs/benchmarks.md, "Memory").

Usage: python3 scripts/memory_profile.py [--size 512] [--spacing 0.4] [--work /tmp/crossreg-memory]

The pair is the shipped 1 mm MNI152 T1 and a T2-like copy of it moved by a known 15 deg / 15 mm rigid
motion (crossreg.synth.cases.make_case), both resampled onto ``size``^3 grids of ``spacing`` mm and
written as int16 NIfTI (what scanners store) by a separate process, so building them does not count.
Then the real ``crossreg.register.register`` runs, with the functions its stages call wrapped so each
call is attributed to its stage; everything between wrapped calls counts as ``other``. Each stage's peak is
the kernel's resident-set high-water mark (VmHWM), reset at the start of the stage through
/proc/self/clear_refs: exact, not sampled (Linux only). "RSS after" is the resident set when the
stage ends.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

GIB = 1024**3
STAGES = ("load", "working grid", "keypoints", "descriptors", "matching", "RANSAC", "refinement", "save")


def _status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmHWM, VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class StageMeter:
    """Peak and retained resident memory, and seconds, per named stage (stages may recur)."""

    def __init__(self) -> None:
        self.peak: dict[str, float] = {}
        self.retained: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.current = "other"
        self._start = time.perf_counter()
        self._reset()

    @staticmethod
    def _reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS

    def switch(self, stage: str) -> str:
        """Close the current stage's segment, start ``stage``; gives back the stage that was running."""
        now, previous = time.perf_counter(), self.current
        self.peak[previous] = max(self.peak.get(previous, 0.0), _status_kib("VmHWM") * 1024 / GIB)
        self.retained[previous] = _status_kib("VmRSS") * 1024 / GIB
        self.seconds[previous] = self.seconds.get(previous, 0.0) + now - self._start
        self._reset()
        self.current, self._start = stage, now
        return previous

    def wrap(self, stage: str, fn: Callable) -> Callable:
        """``fn`` with its calls counted as ``stage``."""

        def wrapped(*args, **kwargs):
            previous = self.switch(stage)
            try:
                return fn(*args, **kwargs)
            finally:
                self.switch(previous)

        return wrapped


def build_pair(work: Path, size: int, spacing_mm: float) -> None:
    """Write fixed.nii and moving.nii (int16, ``size``^3 at ``spacing_mm``), true_transform.tfm and
    landmarks.csv to ``work``."""
    import SimpleITK as sitk

    from crossreg import datasets
    from crossreg.image import Grid, Image
    from crossreg.imageio import to_sitk
    from crossreg.markups import write_matches_csv
    from crossreg.resample import resample
    from crossreg.synth.cases import make_case

    case = make_case(datasets.mni152_t1(1), "t2", 15.0, 15.0, seed=0)
    work.mkdir(parents=True, exist_ok=True)
    for name, image, scale in (("fixed", case.fixed, 10.0), ("moving", case.moving, 1000.0)):
        center = image.grid.center_mm()
        direction = np.asarray(image.direction)
        origin = center - direction @ np.full(3, spacing_mm * (size - 1) / 2)
        grid = Grid((size,) * 3, (spacing_mm,) * 3, tuple(origin), direction)
        fine = resample(image, grid)
        itk = to_sitk(Image(np.rint(fine.array * scale), grid))
        sitk.WriteImage(sitk.Cast(itk, sitk.sitkInt16), str(work / f"{name}.nii"))
    case.true_transform.save(work / "true_transform.tfm")
    n = len(case.landmarks_fixed_mm)
    write_matches_csv(
        work / "landmarks.csv", case.landmarks_fixed_mm, case.landmarks_moving_mm, np.ones(n, bool)
    )


def profile(work: Path) -> tuple[StageMeter, float, str, float]:
    """Register the pair in ``work`` with every stage metered: the meter, mean TRE (mm), the result's
    summary, and the resident memory (GiB) after the imports."""
    from crossreg.config import RegisterConfig
    from crossreg.evaluate.metrics import tre_mm
    from crossreg.imageio import load
    from crossreg.markups import read_matches_csv
    from crossreg.register import register
    from crossreg.transform import read_transform

    wrapped = (
        ("crossreg.plan", "working_image", "working grid"),
        ("crossreg.describe", "detect_keypoints", "keypoints"),
        ("crossreg.describe", "grid_points", "keypoints"),
        ("crossreg.features.mind", "mind_maps", "descriptors"),
        ("crossreg.features.mind", "mind_descriptors", "descriptors"),
        ("crossreg.correspond", "match", "matching"),
        ("crossreg.register", "estimate", "RANSAC"),
        ("crossreg.verify", "overlap_mask", "RANSAC"),
        ("crossreg.polish", "refine", "refinement"),
    )
    owners = [importlib.import_module(module) for module, _, _ in wrapped]  # where stages look them up
    baseline = _status_kib("VmRSS") * 1024 / GIB
    meter = StageMeter()
    for owner, (_, name, stage) in zip(owners, wrapped, strict=True):
        setattr(owner, name, meter.wrap(stage, getattr(owner, name)))
    fixed, moving = meter.wrap("load", lambda: (load(work / "fixed.nii"), load(work / "moving.nii")))()
    result = register(fixed, moving, RegisterConfig(seed=0))
    out = work / "out"
    out.mkdir(exist_ok=True)
    meter.wrap("save", result.save)(out / "transform.tfm", out / "resampled.nii.gz", out / "qa.png")
    meter.switch("other")
    landmarks, _, _ = read_matches_csv(work / "landmarks.csv")
    tre = tre_mm(result.transform, read_transform(work / "true_transform.tfm"), landmarks)
    return meter, float(tre.mean()), result.summary(), baseline


def table(meter: StageMeter) -> str:
    """Markdown table: stage, peak RSS, retained RSS, seconds."""
    rows = ["| stage | peak RSS (GiB) | RSS after (GiB) | time (s) |", "|---|---:|---:|---:|"]
    for stage in (*STAGES, "other"):
        if stage in meter.peak:
            rows.append(
                f"| {stage} | {meter.peak[stage]:.2f} | {meter.retained[stage]:.2f} | "
                f"{meter.seconds[stage]:.1f} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="voxels along each axis")
    parser.add_argument("--spacing", type=float, default=0.4, help="voxel size, mm")
    parser.add_argument("--work", type=Path, default=Path("/tmp/crossreg-memory"), help="folder for the pair")
    args = parser.parse_args()
    if not (args.work / "landmarks.csv").is_file():
        builder = multiprocessing.get_context("spawn").Process(
            target=build_pair, args=(args.work, args.size, args.spacing)
        )
        builder.start()
        builder.join()
        if builder.exitcode != 0:
            raise SystemExit(f"building the pair failed (exit code {builder.exitcode})")
    import psutil
    import torch

    start = time.perf_counter()
    meter, tre, summary, baseline = profile(args.work)
    cpu = platform.processor() or platform.machine()
    print(
        f"{args.size}^3 at {args.spacing} mm; {psutil.cpu_count()} cores ({cpu}), "
        f"{psutil.virtual_memory().total / GIB:.1f} GiB RAM, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    print(f"resident after imports: {baseline:.2f} GiB; total {time.perf_counter() - start:.0f} s")
    print(f"result: {summary}; mean TRE {tre:.2f} mm")
    print(table(meter))


if __name__ == "__main__":
    main()
