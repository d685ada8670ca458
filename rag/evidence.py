"""Which sentence of a cited source supports the answer: the span a UI highlights.

An answer sentence that cites ``[n]`` is compared with each sentence of source ``n`` by the
multilingual embedder (the answer is often in another language than the source, so words do not
overlap), with a bonus for a shared number ("90 Tage" and "90日"). The best source sentence per
citing answer sentence is the evidence; a source cited without a clear best sentence gets its
whole shown passage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from rag.citations import numbers_in
from rag.text import sentence_spans as source_sentence_spans
from rag.embedder import Embedder
from rag.types import Answer, Citation

NUMBER_BONUS = 0.05  # e5 cosine similarities of related sentences differ by a few hundredths
MAX_SENTENCES = 40  # per source: a longer chunk's tail is not searched
MIN_CLAIM_LETTERS = 12  # fewer, once markers are gone ("Source:", "Quelle:"), is no claim of its own
_MARKERS = re.compile(r"\[\d{1,3}\]")


@dataclass(frozen=True, slots=True)
class Evidence:
    """Spans of ``Citation.chunk.text`` that support the answer sentences citing ``number``."""

    number: int
    spans: tuple[tuple[int, int], ...]
    claims: tuple[str, ...]  # the answer sentences that cite it


def shown_text(citation: Citation) -> str:
    """The part of the cited chunk the LLM saw (all of it unless it was cut to fit)."""
    text = citation.chunk.text
    return text if citation.shown_chars is None else text[: citation.shown_chars]


def locate_evidence(answer: Answer, embedder: Embedder) -> dict[int, Evidence]:
    """Evidence for every cited source of ``answer``, keyed by citation number."""
    claims: dict[int, list[str]] = {}
    previous = ""
    for sentence in answer.sentences:
        claim = _MARKERS.sub(" ", sentence.text).strip()
        if _letters(claim) < MIN_CLAIM_LETTERS:  # "Source: [1]" on a line of its own: the sentence before
            claim = previous
        if claim:
            for number in sentence.sources:
                claims.setdefault(number, []).append(claim)
            previous = claim
    cited = [c for c in answer.citations if c.number in claims]
    if not cited:
        return {}
    sentences = {c.number: _candidates(shown_text(c)) for c in cited}
    texts = [shown_text(c)[s:e] for c in cited for s, e in sentences[c.number]]
    claim_texts = [t for c in cited for t in claims[c.number]]
    if not texts or not claim_texts:
        return {}
    source_vectors = _normalised(embedder.embed_documents(texts))
    claim_vectors = _normalised(embedder.embed_queries(claim_texts))
    out: dict[int, Evidence] = {}
    si = ci = 0
    for citation in cited:
        spans = sentences[citation.number]
        mine = source_vectors[si : si + len(spans)]
        source = shown_text(citation)
        best: set[int] = set()
        for claim in claims[citation.number]:
            scores = mine @ claim_vectors[ci]
            ci += 1
            numbers = numbers_in(claim)
            if numbers:
                scores = scores + NUMBER_BONUS * np.array([bool(numbers & numbers_in(source[s:e])) for s, e in spans])
            if spans:
                best.add(int(np.argmax(scores)))
        si += len(spans)
        chosen = tuple(spans[i] for i in sorted(best)) or ((0, len(source)),)
        out[citation.number] = Evidence(citation.number, chosen, tuple(claims[citation.number]))
    return out


def _candidates(text: str) -> list[tuple[int, int]]:
    """Sentences of a source that can support a claim: not Markdown headings, not bare labels."""
    spans = [
        (s, e) for s, e in source_sentence_spans(text) if not text[s:e].startswith("#") and _letters(text[s:e]) >= 4
    ]
    return spans[:MAX_SENTENCES]


def _letters(text: str) -> int:
    return sum(ch.isalpha() for ch in text)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
