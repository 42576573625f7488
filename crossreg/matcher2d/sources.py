"""The real 2D images the matcher pretrains on: MNI152 slices, photographs, procedural pictures.

- **MNI152 slices**: every slice of the shipped T1 at 1 and 2 mm along each of the three axes, except
  the slices ``crossreg bench --ndim 2`` registers (the middle slice of the 2 mm volume along each
  axis, :func:`crossreg.evaluate.cases.synthetic_cases`) and every slice within ``bench_margin_mm`` of
  them in either volume, so the benchmark stays unseen. Slices with little brain are skipped.
- **Photographs and scientific images** that installed packages ship (scikit-image's
  ``skimage.data``, scikit-learn's sample images); an image that would need a download is skipped.
- **Procedural pictures** (random shapes, dead leaves, fractal noise) are drawn per batch on the
  training device by :mod:`crossreg.matcher2d.procedural`.

The shipped NIfTI files are read here with a few lines of numpy, not SimpleITK: training never
resamples them in world space, only cuts index-aligned slices.
"""

from __future__ import annotations

import gzip
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_DATA = Path(__file__).resolve().parent.parent / "data"
#: skimage.data images tried (each is skipped if it needs a download or the package is missing).
SKIMAGE_NAMES = (
    "camera", "astronaut", "coins", "brick", "grass", "gravel", "moon", "text", "rocket",
    "hubble_deep_field", "immunohistochemistry", "retina", "chelsea", "coffee", "horse", "page",
    "clock", "cell", "human_mitosis", "microaneurysms", "logo",
)  # fmt: skip


@dataclass(frozen=True)
class SourceConfig:
    """Which real images go into the pool."""

    bench_margin_mm: float = 12.0  # slices this close to a benchmark slice are left out
    min_brain_fraction: float = 0.15  # slices with a smaller share of brain pixels are skipped
    slice_step: int = 1  # every n-th slice of each volume and axis (tests use a coarser step)
    photographs: bool = True
    pool_size: int = 320  # every source is scaled to fit a square of this many pixels


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A gzipped NIfTI-1 volume as ``(x, y, z)`` float32 array and its ``(3, 4)`` index-to-world
    (sform) matrix, for the shipped MNI152 files (uint8 or float32, little-endian, 3D)."""
    raw = gzip.decompress(path.read_bytes())
    dims = struct.unpack_from("<8h", raw, 40)
    datatype = struct.unpack_from("<h", raw, 70)[0]
    offset = int(struct.unpack_from("<f", raw, 108)[0])
    sform = np.array(struct.unpack_from("<12f", raw, 280), float).reshape(3, 4)
    dtype = {2: np.uint8, 4: np.int16, 16: np.float32}[datatype]
    shape = dims[1 : 1 + dims[0]]
    values = np.frombuffer(raw, dtype, count=int(np.prod(shape)), offset=offset)
    return values.reshape(shape, order="F").astype(np.float32), sform


def bench_positions_mm() -> np.ndarray:
    """``(3,)`` world coordinate (NIfTI frame) along each index axis of the slices that
    ``crossreg bench --ndim 2`` evaluates: the middle slice ``n // 2`` of the 2 mm T1 per axis."""
    volume, sform = read_nifti(_DATA / "mni152_t1_2mm.nii.gz")
    middle = np.array(volume.shape) // 2
    return np.array([sform[a, a] * middle[a] + sform[a, 3] for a in range(3)])


def mni_slices(config: SourceConfig) -> list[np.ndarray]:
    """2D slices ``(h, w)`` in [0, 1] of the shipped T1 volumes, benchmark slices left out."""
    bench = bench_positions_mm()
    slices = []
    for resolution in (1, 2):
        volume, sform = read_nifti(_DATA / f"mni152_t1_{resolution}mm.nii.gz")
        volume = volume / max(float(volume.max()), 1e-6)
        for axis in range(3):
            for k in range(0, volume.shape[axis], config.slice_step):
                position = sform[axis, axis] * k + sform[axis, 3]
                if abs(position - bench[axis]) <= config.bench_margin_mm:
                    continue
                cut = np.take(volume, k, axis=axis).T[::-1]  # rows run superior/anterior to the top
                if (cut > 0.05).mean() >= config.min_brain_fraction:
                    slices.append(np.ascontiguousarray(cut))
    return slices


def photographs() -> list[np.ndarray]:
    """Grey photographs ``(h, w)`` in [0, 1] shipped by installed packages (none if none are)."""
    images = []
    try:
        from sklearn.datasets import load_sample_images

        images += list(load_sample_images().images)
    except ImportError:
        log.info("scikit-learn is not installed: its sample photographs are not used")
    try:
        import skimage.data
    except ImportError:
        log.info("scikit-image is not installed: its sample images are not used")
        return [_grey(i) for i in images]
    for name in SKIMAGE_NAMES:
        try:
            images.append(getattr(skimage.data, name)())
        except (AttributeError, ImportError, OSError, ValueError) as err:  # absent, or needs a download
            log.info("skimage.data.%s skipped (%s)", name, type(err).__name__)
    return [_grey(i) for i in images]


def _grey(image: np.ndarray) -> np.ndarray:
    values = np.asarray(image, np.float32)
    if values.ndim == 3:
        values = values[..., :3].mean(axis=-1)
    low, high = np.percentile(values, (0.5, 99.5))
    return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)


@dataclass(frozen=True, eq=False)
class SourcePool:
    """Real images scaled into squares: ``images`` ``(N, 1, S, S)`` float in [0, 1], zero-padded, and
    ``extent`` ``(N, 2)`` the (width, height) each occupies from the top-left corner, in pixels."""

    images: torch.Tensor
    extent: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


def source_pool(config: SourceConfig = SourceConfig(), device: str | torch.device = "cpu") -> SourcePool:
    """Every real source image of ``config`` in one pool on ``device``."""
    arrays = mni_slices(config) + (photographs() if config.photographs else [])
    size = config.pool_size
    images = torch.zeros(len(arrays), 1, size, size)
    extent = torch.zeros(len(arrays), 2)
    for n, array in enumerate(arrays):
        h, w = array.shape
        scale = size / max(h, w)
        hs, ws = max(1, round(h * scale)), max(1, round(w * scale))
        tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
        images[n, :, :hs, :ws] = F.interpolate(tensor, (hs, ws), mode="bilinear", antialias=True)[0]
        extent[n] = torch.tensor([ws, hs], dtype=torch.float32)
    log.info("source pool: %d real images", len(arrays))
    return SourcePool(images.clamp(0, 1).to(device), extent.to(device))
