"""Second stage: reorder first-stage hits. ``none``, ``cross-encoder`` or ``llm-listwise``.

Both real rerankers reorder only the first ``reranker.top_n`` hits; the rest follow them in
first-stage order with their first-stage score. A reranked hit's ``score`` is the reranker's,
its ``retrieval_score`` stays the first stage's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

from rag.config import RerankerConfig
from rag.llm import LLMClient, Message
from rag.logs import transformers_through_root
from rag.models import missing_model, resolve_model
from rag.types import Hit

log = logging.getLogger(__name__)


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]:
        """The same hits, best first. Never drops or invents one."""
        ...


class NoReranker:
    def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]:
        return list(hits)


class CrossEncoderReranker:
    """A sentence-transformers CrossEncoder scores each (query, passage) pair of the first
    ``top_n`` hits. Scores are what ``CrossEncoder.predict`` gives by default: the model's
    saved activation, a sigmoid for single-label rerankers (bge-reranker), so in (0, 1)."""

    def __init__(self, config: RerankerConfig | None = None) -> None:
        self.config = config or RerankerConfig(kind="cross-encoder")
        self._model = None

    def warm_up(self) -> None:
        if self._model is not None:
            return
        import transformers
        from sentence_transformers import CrossEncoder

        transformers.utils.logging.disable_progress_bar()
        transformers_through_root()

        name = resolve_model(self.config.model, role="reranker", setting="BABELRAG_RERANKER_MODEL")
        try:
            self._model = CrossEncoder(name, device=self.config.device, max_length=self.config.max_length)
        except (OSError, ValueError) as e:
            raise missing_model(
                self.config.model, role="reranker", setting="BABELRAG_RERANKER_MODEL", why=str(e).splitlines()[0]
            ) from e

    def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]:
        if not hits:
            return []
        self.warm_up()
        assert self._model is not None
        head, tail = hits[: self.config.top_n], hits[self.config.top_n :]
        scores = self._model.predict(
            [(query, h.chunk.text) for h in head], batch_size=self.config.batch_size, show_progress_bar=False
        )
        scored = [replace(h, score=float(s)) for h, s in zip(head, scores, strict=True)]
        return sorted(scored, key=lambda h: h.score, reverse=True) + list(tail)


LISTWISE_SYSTEM = (
    "You are RankGPT, an intelligent assistant that ranks passages by their relevance to a query. "
    "Passages and query may be in different languages."
)


class LLMListwiseReranker:
    """RankGPT sliding window: the LLM reads ``window`` numbered passages and answers a
    permutation like ``[2] > [1] > [3]``. Windows move from the bottom of the first ``top_n``
    hits to the top by ``stride``, so a relevant passage can climb from the last place to the first.

    A reranked hit's ``score`` is ``1 / (rank + 1)`` (rank 0 = best): it only encodes the
    LLM's order, which has no scores of its own.

    A window keeps its order when the LLM's answer names no passage, or when the call fails
    (the server is down or slow); after a failed call the query's remaining windows are not
    tried, since each would wait for the same server. Such windows are logged and counted in
    ``failures`` (out of ``windows`` in all), so that an evaluation can report them.
    """

    def __init__(self, client: LLMClient, config: RerankerConfig | None = None) -> None:
        self.client = client
        self.config = config or RerankerConfig(kind="llm-listwise")
        self.windows = 0
        self.failures = 0

    def messages(self, query: str, hits: Sequence[Hit]) -> list[Message]:
        n = len(hits)
        passages = "\n".join(
            f"[{i}] {' '.join(h.chunk.text.split())[: self.config.passage_chars]}" for i, h in enumerate(hits, 1)
        )
        return [
            {"role": "system", "content": LISTWISE_SYSTEM},
            {
                "role": "user",
                "content": (
                    f"I will give you {n} passages, each marked by a number in []. Rank them by relevance "
                    f"to the query: {query}\n\n{passages}\n\nQuery: {query}\n"
                    f"Rank the {n} passages above, most relevant first, using their identifiers, in the "
                    "format [2] > [1] > [3]. Answer with the ranking only."
                ),
            },
        ]

    def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]:
        head, tail = list(hits[: self.config.top_n]), list(hits[self.config.top_n :])
        if len(head) < 2:
            return list(hits)
        starts = window_starts(len(head), self.config.window, self.config.stride)
        self.windows += len(starts)
        for done, start in enumerate(starts):
            window = head[start : start + self.config.window]
            try:
                answer = self.client.chat(self.messages(query, window), max_tokens=8 * len(window) + 16)
            except Exception as e:  # noqa: BLE001 - whatever the client raises, the candidates must survive
                left = len(starts) - done
                self.failures += left
                log.warning(
                    "listwise reranker: the LLM call failed (%s); %d of %d windows keep their order",
                    e,
                    left,
                    len(starts),
                )
                break
            order = parse_permutation(answer, len(window))
            if order is None:
                self.failures += 1
                log.warning(
                    "listwise reranker: no ranking in the LLM's answer %r; the window keeps its order", answer[:200]
                )
                continue
            head[start : start + len(window)] = [window[i] for i in order]
        return [replace(h, score=1 / (rank + 1)) for rank, h in enumerate(head)] + tail


def window_starts(n: int, window: int, stride: int) -> list[int]:
    """Where the windows over ``n`` items begin, bottom first: n - window, then back by
    ``stride``; the last one always begins at 0."""
    return [*range(n - window, 0, -stride), 0]


def parse_permutation(text: str, n: int) -> list[int] | None:
    """0-based order of ``n`` items from an answer like "[3] > [1] > [2]".

    Only bracketed numbers count when there are any, so that "the 3 passages: [2] > [1]" or a
    numbered list "1. [3]" is not misread; otherwise bare numbers count ("2 > 1 > 3").
    Out-of-range and repeated numbers are ignored; items the answer leaves out (also those
    a truncated answer never reached) follow in their previous order. None when the answer
    names no valid item at all.
    """
    tokens = re.findall(r"\[\s*([0-9]+)\s*\]", text) or re.findall(r"[0-9]+", text)
    seen: dict[int, None] = {}
    for token in tokens:
        i = int(token) - 1
        if 0 <= i < n:
            seen.setdefault(i)
    if not seen:
        return None
    return [*seen, *(i for i in range(n) if i not in seen)]
