"""Knowledge bases of 10^4-10^6 chunks of real multilingual text, with vectors, in minutes.

How they are made: every paragraph of the xquad **dev** articles (0-23, 120 paragraphs × 12
languages) is split into sentences with the project's sentence splitter; each sentence is
embedded once with the real embedding model (document prompt) and cached in
``.babelrag/bench-cache/`` (keyed by model and corpus: a re-run embeds nothing). Chunk j is in
language ``LANGUAGES[j % 12]`` and is 4 sentences of that language drawn at random (seeded); its
text is the sentences joined, its vector the normalised sum of theirs (the mean of its sentences,
which is close to, not equal to, what the encoder makes of the whole chunk: e5 mean-pools its
tokens). Chunks are grouped 20 to a document (one source file each), written through the
ingestion job's bookkeeping (``ingestion.job.write_documents``: manifest, centroid sums, state).
Embedding 10^6 chunks for real would take ~10 h on this CPU; the store, the centroids, the
keyword index and the queries see real text and realistic vectors at full size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import ROOT, XQUAD, read_jsonl

from rag.text import sentence_spans
from rag.store import ManifestEntry
from rag.types import Chunk

CACHE = ROOT / ".babelrag" / "bench-cache"
SENTENCES_PER_CHUNK = 4
CHUNKS_PER_DOCUMENT = 20


@dataclass(frozen=True)
class Sentences:
    languages: list[str]
    texts: dict[str, list[str]]  # language -> sentences
    vectors: dict[str, np.ndarray]  # language -> one row per sentence


def sentences(embedder, *, corpus: Path = XQUAD / "corpus.jsonl") -> Sentences:
    """The dev split's sentences per language and their vectors (embedded once, then cached)."""
    rows = [r for r in read_jsonl(corpus) if r["para"] < 120]  # dev articles only
    texts: dict[str, list[str]] = {}
    for r in rows:
        texts.setdefault(r["lang"], []).extend(r["text"][a:b] for a, b in sentence_spans(r["text"]))
    key = hashlib.sha256(json.dumps([embedder.model_id, sorted(texts.items())]).encode()).hexdigest()[:16]
    path = CACHE / f"sentences-{key}.npz"
    if path.exists():
        stored = np.load(path)
        vectors = {lang: stored[lang] for lang in texts}
    else:
        vectors = {lang: embedder.embed_documents(sents) for lang, sents in texts.items()}
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **vectors)
        tmp.replace(path)
    return Sentences(sorted(texts), texts, vectors)


def documents(
    source: Sentences, n_chunks: int, *, seed: int = 0, prefix: str = "/bench"
) -> Iterator[tuple[ManifestEntry, list[Chunk], np.ndarray]]:
    """``n_chunks`` chunks as documents of CHUNKS_PER_DOCUMENT, ready for write_documents."""
    rng = np.random.default_rng(seed)
    langs = source.languages
    for d in range(0, n_chunks, CHUNKS_PER_DOCUMENT):
        lang = langs[(d // CHUNKS_PER_DOCUMENT) % len(langs)]
        pool, pool_vectors = source.texts[lang], source.vectors[lang]
        n = min(CHUNKS_PER_DOCUMENT, n_chunks - d)
        picks = rng.integers(0, len(pool), size=(n, SENTENCES_PER_CHUNK))
        vectors = pool_vectors[picks].sum(axis=1)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        src = f"{prefix}/{lang}/{d // CHUNKS_PER_DOCUMENT}.txt"
        chunks = []
        for i, row in enumerate(picks):
            text = " ".join(pool[k] for k in row)
            chunks.append(
                Chunk(id=f"{src}#{i}", text=text, source=src, index=i, start=0, end=len(text), language=lang,
                      doc_hash=src)  # fmt: skip
            )
        entry = ManifestEntry(src, src, tuple(c.id for c in chunks), "done", language=lang)
        yield entry, chunks, vectors.astype(np.float32)
