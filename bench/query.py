"""First-stage retrieval latency at 10k chunks, against exact NumPy search in the same run.

    python bench/query.py [--chunks 10000] [--queries 50] [--json OUT]

Fills an embedded Chroma collection with ``--chunks`` unit vectors of the embedding model's
dimension (random: the store's search time does not depend on what the vectors mean, and
embedding 10k real chunks takes ~10 min on this CPU), then times, for xquad dev questions in
12 languages:
- ``Pipeline.retrieve`` end to end with the default first stage (centring + BM25) and with plain
  dense search (the path before issue 4);
- its parts: query embedding, language id, the collection check, the index-cache check, Chroma
  top-20 and top-100 with vectors, the BM25 search;
- the baseline: exact top-20 by a NumPy dot product over the same vectors.
Prints median and p95 milliseconds per query, and the ratio of Chroma to NumPy search.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CPU_CONFIG, XQUAD, read_jsonl, scratch_pipeline

from ingestion.job import write_documents
from rag.store import ManifestEntry
from rag.types import Chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries-file", type=Path, default=XQUAD / "queries_dev.jsonl")
    parser.add_argument("--config", type=Path, default=CPU_CONFIG)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    rows = read_jsonl(args.queries_file)
    questions = [r["question"] for r in rows[:: max(1, len(rows) // args.queries)]][: args.queries]

    rag = scratch_pipeline(args.config, Path(tempfile.mkdtemp(prefix="babelrag-query-")) / "chroma")
    settings = rag.settings
    rag.embedder.embed_queries(["warm up"])
    dim = rag.embedder.dimension
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.chunks, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    fingerprint = {"embedding_model": rag.embedder.model_id, "dimension": dim, "bench": "random vectors"}
    rag.store.ensure_collection("bench-query", fingerprint=fingerprint)
    start = time.perf_counter()
    for i in range(0, args.chunks, 1000):
        documents = []
        for d in range(i, min(i + 1000, args.chunks), 10):
            chunks = [
                Chunk(id=f"c{j}", text=f"chunk {j}", source=f"/bench/{d // 10}.txt", index=j % 10, start=0, end=9,
                      language="en", doc_hash="x")  # fmt: skip
                for j in range(d, min(d + 10, args.chunks))
            ]
            entry = ManifestEntry(chunks[0].source, "x", tuple(c.id for c in chunks), "done", language="en")
            documents.append((entry, chunks, vectors[d : d + len(chunks)]))
        write_documents(rag.store, "bench-query", documents)
    fill_s = time.perf_counter() - start

    k = settings.retrieval.candidates
    settings.retrieval.query_cache = 0  # every timed call embeds its question
    plain = scratch_pipeline(args.config, settings.store.path)
    plain.settings.retrieval.query_cache = 0
    plain.settings.retrieval.mode = "dense"
    plain.settings.retrieval.centring = False
    plain = type(rag)(plain.settings, embedder=rag.embedder, language=rag.language)  # same models, old path
    rag = type(rag)(settings, embedder=rag.embedder, language=rag.language)
    rag.retrieve(questions[0], collection="bench-query", top_k=k, reranker="none")  # builds the keyword index
    depth = settings.retrieval.centring_depth
    keyword = rag.retriever.keyword_index("bench-query")  # type: ignore[attr-defined]
    names = [
        "retrieve, default (centring + BM25)", "retrieve, plain dense", "  query embedding",
        "  language id", "  store.info (collection check)", "  store.version (index cache check)",
        f"  Chroma top {k}", f"  Chroma top {depth} with vectors", "  BM25 search", "exact NumPy search",
    ]  # fmt: skip
    timings: dict[str, list[float]] = {name: [] for name in names}

    def timed(name: str, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[name].append(time.perf_counter() - t)
        return out

    for q in questions:
        timed(names[0], rag.retrieve, q, collection="bench-query", top_k=k, reranker="none")
        timed(names[1], plain.retrieve, q, collection="bench-query", top_k=k, reranker="none")
        vector = timed(names[2], rag.embedder.embed_queries, [q])[0]
        lang = timed(names[3], rag.language.detect, q)
        timed(names[4], rag.store.info, "bench-query")
        timed(names[5], rag.store.version, "bench-query")
        timed(names[6], rag.store.query, "bench-query", vector, top_k=k)
        timed(names[7], rag.store.query_with_vectors, "bench-query", vector, top_k=depth)
        timed(names[8], keyword.search, q, language=lang, top_k=k, languages=[lang])
        timed(names[9], lambda v: np.argpartition(-(vectors @ v), k)[:k], vector)
    chroma, exact = timings[names[6]], timings[names[9]]

    def ms(xs: list[float]) -> tuple[float, float]:
        xs = sorted(xs)
        return statistics.median(xs) * 1000, xs[int(0.95 * (len(xs) - 1))] * 1000

    numbers = {"chunks": args.chunks, "queries": len(questions), "top_k": k, "fill_s": round(fill_s, 1)}
    print(f"{args.chunks} chunks ({dim} dims) stored in {fill_s:.1f} s; {len(questions)} xquad dev questions, top {k}")
    for name, xs in timings.items():
        median, p95 = ms(xs)
        numbers[name.strip()] = {"median_ms": round(median, 2), "p95_ms": round(p95, 2)}
        print(f"{name:40s} median {median:7.2f} ms   p95 {p95:7.2f} ms")
    print(f"Chroma / exact search: {statistics.median(chroma) / statistics.median(exact):.1f}x")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
