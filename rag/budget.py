"""The prompt's budget: which retrieved hits fit the model's context, and whether they can
support an answer at all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag.config import GenerationConfig
from rag.errors import QueryError
from rag.generator import PromptSource, build_messages, format_source
from rag.llm import TokenCount
from rag.text import answer_sentence_spans
from rag.types import Hit

DEFAULT_CONTEXT_TOKENS = 3000  # when neither the config nor the server says
PROMPT_MARGIN_TOKENS = 64  # chat template tokens around the messages


def context_budget(
    question: str, language: str | None, count: TokenCount, *, config: GenerationConfig, max_tokens: int,
    context: int | None,
) -> int:  # fmt: skip
    """Tokens left for sources: ``generation.context_tokens``, and what the server's context
    (``context``, vLLM's max_model_len) leaves after the instructions, the question and the
    answer (``max_tokens``)."""
    budgets = []
    if config.context_tokens is not None:
        budgets.append(config.context_tokens)
    if context is not None:
        frame = sum(count(m["content"]) for m in build_messages(question, [], language=language, strict=True))
        budgets.append(context - max_tokens - frame - PROMPT_MARGIN_TOKENS)
    budget = min(budgets) if budgets else DEFAULT_CONTEXT_TOKENS
    if budget < 32:
        raise QueryError(
            f"the question leaves {budget} tokens for sources in the model's context ({context} tokens, "
            f"{max_tokens} of them for the answer); shorten the question or lower llm.max_tokens"
        )
    return budget


@dataclass(frozen=True, slots=True)
class FittedSources:
    sources: list[PromptSource]
    hits: list[Hit]  # hits[i] is sources[i]'s chunk
    shown_chars: list[int | None]  # characters of a truncated chunk shown, else None
    dropped: int  # hits left out
    tokens: int


def fit_sources(hits: Sequence[Hit], budget: int, count: TokenCount) -> FittedSources:
    """The best hits, in rank order, whose text fits ``budget`` tokens.

    A hit that does not fit is left out and smaller ones after it may still fit; the first hit
    that does not fit whole, while nothing has been cut yet, is cut after its last sentence that
    fits, and the prompt says it is an excerpt. A chunk is never cut mid-sentence.
    """
    sources: list[PromptSource] = []
    kept: list[Hit] = []
    shown: list[int | None] = []
    used = 0
    cut_one = False
    for hit in hits:
        number = len(sources) + 1
        source = PromptSource(number, hit.chunk.text)
        cost = count(format_source(source) + "\n\n")
        if used + cost <= budget:
            sources.append(source)
            kept.append(hit)
            shown.append(None)
            used += cost
            continue
        if cut_one:
            continue
        text = hit.chunk.text
        best = None
        for _, end in answer_sentence_spans(text):
            candidate = PromptSource(number, text[:end].rstrip(), truncated=True)
            c = count(format_source(candidate) + "\n\n")
            if used + c > budget:
                break
            best = (candidate, c, len(candidate.text))
        if best is not None and best[2] < len(text.rstrip()):
            cut_one = True
            sources.append(best[0])
            kept.append(hit)
            shown.append(best[2])
            used += best[1]
    return FittedSources(sources, kept, shown, dropped=len(hits) - len(kept), tokens=used)


def below_thresholds(hits: Sequence[Hit], config: GenerationConfig, *, reranked: bool) -> str | None:
    """Why ``hits`` cannot support an answer without asking the LLM, or None when they may."""
    if not hits:
        return "nothing was retrieved"
    best = max(h.retrieval_score for h in hits)
    if config.min_retrieval_score is not None and best < config.min_retrieval_score:
        return f"the best retrieval score {best:.3f} is below generation.min_retrieval_score"
    if reranked and config.min_rerank_score is not None and hits[0].score < config.min_rerank_score:
        return f"the best reranker score {hits[0].score:.3f} is below generation.min_rerank_score"
    return None
