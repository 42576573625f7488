"""ImageCache: an image is known by its content, working images come back as made, the oldest goes."""

import numpy as np

from crossreg.image import Grid, Image
from crossreg.image_cache import ImageCache, fingerprint


def image(seed: int = 0, origin=(0.0, 0.0, 0.0)) -> Image:
    array = np.random.default_rng(seed).random((12, 14, 16)).astype(np.float32)
    return Image(array, Grid(array.shape, (2.0, 2.0, 2.0), origin, np.eye(3)))


def test_fingerprint_follows_content_voxels_mask_and_geometry():
    a = image()
    assert fingerprint(a) == fingerprint(Image(a.array.copy(), a.grid))
    changed = a.array.copy()
    changed[3, 4, 5] += 1e-6
    assert fingerprint(Image(changed, a.grid)) != fingerprint(a)
    assert fingerprint(image(origin=(0.0, 0.0, 0.5))) != fingerprint(a)
    assert fingerprint(a.with_array(a.array, a.array > 0.5)) != fingerprint(a)


def test_working_images_and_descriptions_come_back_until_evicted():
    cache = ImageCache(capacity=2)
    first = cache.working(image(0), 4.0)
    assert cache.working(Image(image(0).array.copy(), image(0).grid), 4.0) is first
    coarser = cache.working(image(0), 3.0)
    assert coarser is not first
    made = []
    assert cache.described(first, "key", lambda: made.append(1) or "description") == "description"
    assert cache.described(first, "key", lambda: made.append(1) or "again") == "description"
    assert len(made) == 1
    assert cache.described(coarser, "key", lambda: "of the coarser grid") == "of the coarser grid"
    cache.working(image(1), 4.0)
    cache.working(image(2), 4.0)  # three images in a cache of two: the first goes
    assert cache.working(image(0), 4.0) is not first
    assert cache.described(first, "key", lambda: "made anew") == "made anew"


def test_no_capacity_keeps_nothing():
    cache = ImageCache(capacity=0)
    work = cache.working(image(0), 4.0)
    assert cache.working(image(0), 4.0) is not work
    assert cache.described(work, "key", lambda: "made") == "made"
