"""Seconds per pair of the shipped 2D matcher, model loaded, in-process (median of warm runs).

python scripts/time_matcher.py [cpu|cuda] [THREADS]

Pairs: the shipped MNI152 T1's axial slice (1 mm) resized to 640 x 480 and to 480 x 360, against a
shifted, inverted copy; what is timed is `find_matches`: both backbones, attention, coarse matching
and refinement.
"""

import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from crossreg.datasets import mni152_slice
from crossreg.matcher2d.match import Matcher2dConfig, find_matches, load_matcher

device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
if len(sys.argv) > 2:
    torch.set_num_threads(int(sys.argv[2]))
net, _ = load_matcher(None, device)
slice_ = torch.from_numpy(np.ascontiguousarray(mni152_slice(1, "axial").array, dtype=np.float32))
slice_ = (slice_ / slice_.max())[None, None]


def sync() -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


for width, height in ((640, 480), (480, 360)):
    image0 = F.interpolate(slice_, size=(height, width), mode="bilinear", align_corners=False)
    image1 = torch.roll(1.0 - image0, (height // 20, width // 20), (2, 3)) ** 1.5
    mask = torch.ones_like(image0, dtype=torch.bool)
    pair = [t.to(device) for t in (image0, image1, mask, mask)]
    seconds, found = [], None
    with torch.no_grad():
        for _ in range(12):
            sync()
            start = time.perf_counter()
            found = find_matches(net, *pair, Matcher2dConfig())
            sync()
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds[2:])
    print(
        f"{width} x {height} on {device} ({torch.get_num_threads()} threads): {median * 1000:.1f} ms "
        f"per pair (median of {len(seconds) - 2} warm runs), {len(found)} matches"
    )
