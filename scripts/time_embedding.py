"""Seconds to embed a 2 mm brain and to find landmarks in it, on CPU or GPU (warm: second run).

python scripts/time_embedding.py [cpu|cuda] [THREADS]
"""

import sys
import time

import numpy as np
import torch

from crossreg.datasets import mni152_t1, mni152_tissues
from crossreg.features.uae import EmbeddingFeatures, load_embedding_model
from crossreg.locate import locate
from crossreg.resample import working_image
from crossreg.synth.geometry import salient_landmarks
from crossreg.synth.labels import head_labels
from crossreg.synth.subjects import SubjectConfig, make_subject

device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
if len(sys.argv) > 2:
    torch.set_num_threads(int(sys.argv[2]))
t1 = mni152_t1(2)
subject = make_subject(t1, head_labels(t1, mni152_tissues()), SubjectConfig(families=("regional",)), seed=5)
template, query = working_image(t1, 2.0), working_image(subject.image, 2.0)
points = salient_landmarks(t1, 40)
features = EmbeddingFeatures(load_embedding_model(None, device)[0])


def sync() -> None:
    if device == "cuda":
        torch.cuda.synchronize()


for run in range(2):
    sync()
    start = time.perf_counter()
    source, target = features.describe(template), features.describe(query)
    sync()
    embedded = time.perf_counter() - start
    start = time.perf_counter()
    found = locate(source, points, target)
    sync()
    located = time.perf_counter() - start
    error = np.linalg.norm(found.points_mm - np.asarray(subject.to_subject(points)), axis=1)
    print(
        f"{device} run {run}: embed 2 volumes {embedded:.2f} s ({embedded / 2:.2f} s each), "
        f"locate {len(points)} points with round trip {located:.2f} s ({1000 * located / len(points):.1f} ms "
        f"per point); mean error {error.mean():.2f} mm"
    )
