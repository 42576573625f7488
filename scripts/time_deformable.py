"""Seconds of the deformable stage alone (warm: the second of two runs), on CPU or GPU, with the TRE
after rigid and after deformable, on the first case of each synthetic brain-shift kind that the rigid
registration does not refuse.

python scripts/time_deformable.py [cpu|cuda] [SEED] [THREADS]
"""

import sys
import time

import torch

from crossreg.config import RegisterConfig
from crossreg.deformable import deform
from crossreg.errors import RegistrationFailed
from crossreg.evaluate.cases import synthetic_cases
from crossreg.register import register

device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
if len(sys.argv) > 3:
    torch.set_num_threads(int(sys.argv[3]))


def tre(transform, case) -> float:
    return float(case.landmark_errors_mm(transform).mean())


done = set()
for case in synthetic_cases(("us-shift", "t2-shift", "ct-shift"), 3, seed=seed, ndim=3):
    if case.kind in done:
        continue
    try:
        rigid = register(case.fixed, case.moving, RegisterConfig(device=device, seed=seed)).transform
    except RegistrationFailed:
        continue
    done.add(case.kind)
    seconds = []
    for _ in range(2):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = deform(case.fixed, case.moving, rigid, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    print(
        f"{case.name} on {device}: deformable stage {seconds[-1]:.2f} s (first run {seconds[0]:.2f} s); "
        f"TRE {tre(rigid, case):.2f} mm after rigid, {tre(result.transform, case):.2f} mm after deformable; "
        f"{100 * result.negative_jacobian_fov:.3f}% folded in the fixed FOV"
    )
