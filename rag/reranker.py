"""Second stage: reorder first-stage hits. ``none``, ``cross-encoder`` or ``llm-listwise``."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

from rag.config import RerankerConfig
from rag.generator import LLMClient, Message
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
    """A sentence-transformers CrossEncoder scores each (query, passage) pair."""

    def __init__(self, config: RerankerConfig | None = None) -> None:
        self.config = config or RerankerConfig(kind="cross-encoder")
        self._model = None

    def warm_up(self) -> None:
        if self._model is not None:
            return
        import transformers
        from sentence_transformers import CrossEncoder

        transformers.utils.logging.disable_progress_bar()

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
        scores = self._model.predict(
            [(query, h.chunk.text) for h in hits], batch_size=self.config.batch_size, show_progress_bar=False
        )
        scored = [replace(h, score=float(s)) for h, s in zip(hits, scores, strict=True)]
        return sorted(scored, key=lambda h: h.score, reverse=True)


LISTWISE_SYSTEM = (
    "You are RankGPT, an intelligent assistant that ranks passages by their relevance to a query. "
    "Passages and query may be in different languages."
)


class LLMListwiseReranker:
    """RankGPT-style: the LLM reads the numbered passages and answers a permutation
    like ``[2] > [1] > [3]``. Garbage in the answer falls back to first-stage order."""

    def __init__(self, client: LLMClient, *, passage_chars: int = 400) -> None:
        self.client = client
        self.passage_chars = passage_chars

    def messages(self, query: str, hits: Sequence[Hit]) -> list[Message]:
        n = len(hits)
        passages = "\n".join(f"[{i}] {' '.join(h.chunk.text.split())[: self.passage_chars]}" for i, h in enumerate(hits, 1))
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
        if len(hits) < 2:
            return list(hits)
        answer = self.client.chat(self.messages(query, hits), max_tokens=8 * len(hits) + 16)
        order = parse_permutation(answer, len(hits))
        if order is None:
            log.warning("listwise reranker: no ranking in the LLM's answer %r; keeping first-stage order", answer[:200])
            return list(hits)
        return [hits[i] for i in order]


def parse_permutation(text: str, n: int) -> list[int] | None:
    """0-based order of ``n`` items from an answer like "[3] > [1] > [2]".

    Out-of-range and repeated numbers are ignored; items the answer leaves out follow in
    their original order. None when the answer names no valid item at all.
    """
    seen: list[int] = []
    for token in re.findall(r"\d+", text):
        i = int(token) - 1
        if 0 <= i < n and i not in seen:
            seen.append(i)
    if not seen:
        return None
    return seen + [i for i in range(n) if i not in seen]
