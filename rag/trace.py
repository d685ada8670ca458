"""The per-answer trace: seconds per stage and the LLM tokens spent, owned by the answer's stream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rag.types import Usage


@dataclass(slots=True)
class Trace:
    """Filled in as one answer is made: stages time themselves with ``stage``, LLM calls add
    their ``usage``; ``Answer.timings`` and ``Answer.usage`` are its final values."""

    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    usage: Usage = field(default_factory=Usage)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (added up when a stage runs more than once)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def mark(self, name: str) -> None:
        """Seconds from the start to now as ``name`` (the first time only), e.g. "first_token"."""
        self.timings.setdefault(name, time.perf_counter() - self.started)

    def add(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    def finish(self) -> dict[str, float]:
        """The timings with "total", the seconds from the start to now."""
        self.timings["total"] = time.perf_counter() - self.started
        return dict(self.timings)
