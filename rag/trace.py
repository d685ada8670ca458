"""The per-answer trace: seconds per stage and the LLM tokens spent, owned by the answer's stream.

Each stage's end is logged (INFO, with ``stage`` and ``seconds`` as fields), so a JSON log holds
one line per stage under the request id of the question (rag/logs.py). The metrics read the
finished trace (rag/metrics.py): stages are timed once, here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from rag.types import Usage

log = logging.getLogger(__name__)

# The trace whose stage runs in this context: a step deep inside a stage (the query embedding
# inside retrieval) times itself into it with ``substage``, without a trace handed down to it.
_ACTIVE: ContextVar[Trace | None] = ContextVar("babelrag_trace", default=None)


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
        active = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(active)
            self.record(name, time.perf_counter() - t0)

    def record(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name``, for a stage timed by its own code (generate, translate)."""
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        log.info("stage %s: %.3f s", name, seconds, extra={"stage": name, "seconds": round(seconds, 6)})

    def mark(self, name: str) -> None:
        """Seconds from the start to now as ``name`` (the first time only), e.g. "first_token"."""
        if name not in self.timings:
            self.record(name, time.perf_counter() - self.started)

    def add(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    def finish(self) -> dict[str, float]:
        """The timings with "total", the seconds from the start to now."""
        self.timings["total"] = time.perf_counter() - self.started
        return dict(self.timings)


@contextmanager
def substage(name: str) -> Iterator[None]:
    """Time the block as stage ``name`` of the trace whose stage runs here (it nests in that
    stage: "embed" is part of "retrieve"); untimed outside a traced stage."""
    trace = _ACTIVE.get()
    if trace is None:
        yield
        return
    with trace.stage(name):
        yield
