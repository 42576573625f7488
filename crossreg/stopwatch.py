"""Stopwatch: wall time of named stages, and word of each stage as it starts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Stopwatch:
    """``with clock("describe", "describing 1500 points"): ...`` times the block into
    ``clock.seconds["describe"]`` and first tells ``on_stage`` the message (a CLI status line)."""

    def __init__(self, on_stage: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self._on_stage = on_stage

    @contextmanager
    def __call__(self, name: str, message: str = "") -> Iterator[None]:
        if self._on_stage is not None and message:
            self._on_stage(message)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start
