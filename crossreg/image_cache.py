"""ImageCache: the working grids and descriptions of the last images a Registrator registered, by content.

A navigation system registers ultrasound sweep after sweep to one preoperative MRI. Resampling the MRI
to its working grid and describing it (MIND-SSC maps, the CrossKEY network, descriptors at every
candidate of a dense grid) is most of a registration's work, and the same every time. The cache keeps,
for the last few images it saw (known by their content: array, mask and geometry, hashed), the working
image of each spacing and each description made of it, so that a pair whose fixed image was seen before
redoes none of that: the same computation, the same answer. What it keeps stays where it was made (the
features' device): about 200 MB for a whole-head MRI that CrossKEY describes densely.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from crossreg.image import Image
from crossreg.resample import working_image

if TYPE_CHECKING:
    from crossreg.describe import Described


def fingerprint(image: Image) -> bytes:
    """A digest of ``image``'s array, mask and geometry: equal for images that register alike."""
    digest = hashlib.blake2b(digest_size=16)
    grid = image.grid
    layout = (image.array.dtype.str, image.array.shape, grid.spacing_mm, grid.origin_mm)
    digest.update(repr((layout, np.asarray(grid.direction, float).tolist())).encode())
    digest.update(np.ascontiguousarray(image.array).view(np.uint8))
    if image.mask is not None:
        digest.update(np.packbits(image.mask))
    return digest.digest()


@dataclass(eq=False)
class _Entry:
    """What the cache keeps of one image: working images by spacing, descriptions by spacing and what
    else made them."""

    working: dict[float, Image] = field(default_factory=dict)
    described: dict[tuple[float, Hashable], Described] = field(default_factory=dict)


class ImageCache:
    """Working images and descriptions of the last ``capacity`` images (0: none kept)."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._owner: dict[int, bytes] = {}  # id of a kept working image -> its image's fingerprint

    def working(self, image: Image, spacing_mm: float) -> Image:
        """``working_image(image, spacing_mm)`` (crossreg.resample), or what it gave before."""
        if self.capacity <= 0:
            return working_image(image, spacing_mm)
        key = fingerprint(image)
        entry = self._entries.pop(key, None) or _Entry()
        self._entries[key] = entry  # the most recently used last
        if spacing_mm not in entry.working:
            entry.working[spacing_mm] = working_image(image, spacing_mm)
            self._owner[id(entry.working[spacing_mm])] = key
        while len(self._entries) > self.capacity:
            _, dropped = self._entries.popitem(last=False)
            for kept in dropped.working.values():
                self._owner.pop(id(kept), None)
        return entry.working[spacing_mm]

    def described(self, work: Image, key: Hashable, make: Callable[[], Described]) -> Described:
        """``make()``, or what it gave before for the working image ``work`` (one this cache returned)
        and ``key`` (what else the description depends on)."""
        entry = self._entries.get(self._owner.get(id(work), b""))
        spacing = next((s for s, kept in (entry.working if entry else {}).items() if kept is work), None)
        if entry is None or spacing is None:
            return make()
        # One image has a working image per spacing, and each its own descriptions.
        if (spacing, key) not in entry.described:
            entry.described[spacing, key] = make()
        return entry.described[spacing, key]
