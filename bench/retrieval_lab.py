"""First-stage design choices, measured on the xquad dev queries with exact search.

    python bench/retrieval_lab.py [--sample N] [--json OUT]

Reads the chunk vectors that `babelrag eval retrieval` stored in its throwaway collection (run
that first, default settings), embeds the dev queries once (cached under .babelrag/eval/), and
scores variants in NumPy, with the harness's own metrics (rag.evaluation):

- dense: cosine, each doc scored by its best chunk (what Pipeline.retrieve does);
- centred: per-language mean-centring of the vectors (Libovický et al.), with each language's
  centroid taken from the collection's own chunks;
- hybrid variants: dense fused with the script-aware BM25 of rag.keyword, (a) naive RRF over the
  whole corpus, (b) BM25 only among chunks in the query's language, (c) weighted score fusion;
- own-language bonus: a fixed boost to the similarity of chunks in the query's language.

These are the numbers behind the choice of the shipped default (README, "Retrieval").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import ROOT, XQUAD

from rag import load_settings
from rag.embedder import SentenceTransformerEmbedder
from rag.evaluation.retrieval import (
    DEPTH,
    RunLine,
    eval_collection_name,
    eval_index_settings,
    read_corpus,
    read_queries,
    score_matrix,
    score_polyglot,
)
from rag.language import language_identifier
from rag.store import ChromaStore


def load_chunks(store: ChromaStore, collection: str):
    col = store._collection(collection)
    got = col.get(include=["embeddings", "metadatas", "documents"])
    ids = got["ids"]
    vectors = np.asarray(got["embeddings"], dtype=np.float32)
    metas = got["metadatas"]
    doc_ids = np.array([Path(m["source"]).stem for m in metas])
    chunk_lang = np.array([m.get("language") or "?" for m in metas])
    return ids, vectors, doc_ids, chunk_lang, got["documents"]


def rank_docs(scores: np.ndarray, doc_ids: np.ndarray, mask: np.ndarray | None) -> list[str]:
    """Doc ids by their best chunk's score, top DEPTH."""
    s = scores if mask is None else np.where(mask, scores, -np.inf)
    k = min(DEPTH * 6, len(s) - 1)
    top = np.argpartition(-s, k)[: k + 1]
    order = top[np.argsort(-s[top])]
    ranked = []
    for i in order:
        if not np.isfinite(s[i]):
            break
        d = doc_ids[i]
        if d not in ranked:
            ranked.append(d)
            if len(ranked) == DEPTH:
                break
    return ranked


def evaluate(name: str, score_fn: Callable[[int], np.ndarray], queries, docs, doc_ids, chunk_lang, langs, prefer=None) -> dict:
    """score_fn(query index) -> scores over all chunks; the matrix filters on the chunk language
    label, as the store's language filter does."""
    lines = []
    missing_own: list[float] = []
    masks = {lang: chunk_lang == lang for lang in langs}
    for qi, q in enumerate(queries):
        scores = score_fn(qi)
        for lang in langs:
            lines.append(RunLine(q.qid, lang, rank_docs(scores, doc_ids, masks[lang])))
        poly = scores if prefer is None else prefer(qi, scores, None)
        lines.append(RunLine(q.qid, "all", rank_docs(poly, doc_ids, None)))
        # the same paragraph with its own-language version deleted: is it still found?
        gone = f"p{q.para}-{q.lang}"
        allowed = doc_ids != gone
        poly = scores if prefer is None else prefer(qi, scores, allowed)
        ranked = rank_docs(poly, doc_ids, allowed)
        first = next((n for n, d in enumerate(ranked[:10], 1) if int(d[1:].split("-")[0]) == q.para), None)
        missing_own.append(1 / first if first else 0.0)
    m = score_matrix(lines, queries)
    p = score_polyglot(lines, queries, docs)
    row = {
        "system": name,
        "mono": m.mono["ndcg@10"],
        "xling": m.xling["ndcg@10"],
        "worst": f"{m.worst[2]:.3f} {m.worst[0]}→{m.worst[1]}",
        "poly_ndcg": p.metrics["ndcg@10"],
        "para_mrr": p.metrics["para_mrr@10"],
        "para_r20": p.metrics["para_r@20"],
        "own10": p.metrics["own@10"],
        "para_mrr_without_own": float(np.mean(missing_own)),
    }
    print(
        f"{name:<34} mono {row['mono']:.3f}  x-ling {row['xling']:.3f}  worst {row['worst']:<14} "
        f"poly nDCG {row['poly_ndcg']:.3f}  para-MRR {row['para_mrr']:.3f}  own@10 {row['own10']:.3f}  para-MRR w/o own {row['para_mrr_without_own']:.3f}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=None, help="questions (x12 languages); default all dev")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", default=None, help="comma-separated system names")
    args = parser.parse_args()

    settings = load_settings()
    docs = read_corpus(XQUAD / "corpus.jsonl")
    queries = read_queries(XQUAD / "queries_dev.jsonl", sample=args.sample)
    collection = eval_collection_name(docs, eval_index_settings(settings))
    store = ChromaStore(settings.store)
    ids, vectors, doc_ids, chunk_lang, texts = load_chunks(store, collection)
    doc_lang = np.array([d.rsplit("-", 1)[1] for d in doc_ids])
    langs = sorted(set(doc_lang))
    print(f"{len(ids)} chunks of {len(set(doc_ids))} docs; {len(queries)} queries; "
          f"chunk language label = corpus language for {np.mean(chunk_lang == doc_lang):.4f}")  # fmt: skip

    cache = ROOT / ".babelrag" / "eval" / (
        "queries-" + hashlib.sha256(("\n".join(q.question for q in queries) + settings.embedding.model).encode()).hexdigest()[:12] + ".npy"
    )  # fmt: skip
    if cache.exists():
        qv = np.load(cache)
    else:
        t = time.perf_counter()
        qv = SentenceTransformerEmbedder(settings.embedding).embed_queries([q.question for q in queries])
        print(f"embedded {len(queries)} queries in {time.perf_counter() - t:.0f} s")
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, qv)
    detect = language_identifier(settings.language).detect
    q_lang = [detect(q.question) for q in queries]
    print(f"query language detected = gold for {np.mean([a == q.lang for a, q in zip(q_lang, queries)]):.4f}")

    dense = qv @ vectors.T  # (queries, chunks) cosine: all vectors are unit length

    # per-language centring, centroids from the collection's chunks (by chunk language label)
    centroids = {lang: vectors[chunk_lang == lang].mean(axis=0) for lang in set(chunk_lang)}
    global_centroid = vectors.mean(axis=0)
    vc = vectors - np.stack([centroids[lang] for lang in chunk_lang])
    vc /= np.linalg.norm(vc, axis=1, keepdims=True)
    qc = qv - np.stack([centroids.get(lang, global_centroid) for lang in q_lang])
    qc /= np.linalg.norm(qc, axis=1, keepdims=True)
    centred = qc @ vc.T
    centred_docs_only = (qv @ vc.T)
    q_centroids = defaultdict(list)
    for v, lang in zip(qv, q_lang):
        q_centroids[lang].append(v)
    q_centroids = {k: np.mean(v, axis=0) for k, v in q_centroids.items()}
    qq = qv - np.stack([q_centroids[lang] for lang in q_lang])
    qq /= np.linalg.norm(qq, axis=1, keepdims=True)
    centred_q_own = qq @ vc.T

    systems: dict[str, Callable[[int], np.ndarray]] = {
        "dense": lambda i: dense[i],
        "centred (doc centroids)": lambda i: centred[i],
        "centred docs only": lambda i: centred_docs_only[i],
        "centred (query-set centroids)": lambda i: centred_q_own[i],
    }
    for bonus in (0.02, 0.04, 0.06):
        systems[f"dense + own-lang bonus {bonus}"] = lambda i, b=bonus: dense[i] + b * (chunk_lang == q_lang[i])
        systems[f"centred + own-lang bonus {bonus}"] = lambda i, b=bonus: centred[i] + b * (chunk_lang == q_lang[i])

    try:
        from rag.keyword import KeywordIndex
    except ImportError:
        KeywordIndex = None
    if KeywordIndex is not None:
        t = time.perf_counter()
        index = KeywordIndex.build(Path(tempfile.mkdtemp(prefix="babelrag-lab-kw-")), ids, texts, list(chunk_lang))
        print(f"BM25 index of {len(ids)} chunks in {time.perf_counter() - t:.1f} s")
        pos = {cid: n for n, cid in enumerate(ids)}
        bm25 = np.zeros_like(dense)
        bm25_own = np.zeros_like(dense)
        bm25_ideal = np.zeros_like(dense)
        for i, q in enumerate(queries):
            for cid, s in index.search(q.question, language=q_lang[i], top_k=100):
                bm25[i, pos[cid]] = s
            for cid, s in index.search(q.question, language=q_lang[i], top_k=100, languages=[q_lang[i]]):
                bm25_own[i, pos[cid]] = s
            ideal = index.ideal_score(q.question, q_lang[i])
            bm25_ideal[i] = bm25_own[i] / ideal if ideal > 0 else 0.0

        def rrf(*score_rows: np.ndarray, k: int = 60, weights=None) -> np.ndarray:
            out = np.zeros(score_rows[0].shape)
            for n, s in enumerate(score_rows):
                ranks = np.empty(len(s))
                order = np.argsort(-s)
                ranks[order] = np.arange(1, len(s) + 1)
                w = 1.0 if weights is None else weights[n]
                out += np.where(s > 0, w / (k + ranks), 0.0) if n else w / (k + ranks)
            return out

        def norm(s: np.ndarray) -> np.ndarray:
            top = s.max()
            return s / top if top > 0 else s

        systems["bm25"] = lambda i: bm25[i]
        systems["rrf(dense, bm25 all)"] = lambda i: rrf(dense[i], bm25[i])
        systems["rrf(dense, bm25 own-lang)"] = lambda i: rrf(dense[i], bm25_own[i])
        systems["rrf(centred, bm25 own-lang)"] = lambda i: rrf(centred[i], bm25_own[i])
        for w in (0.05, 0.1, 0.2):
            systems[f"dense + {w}·bm25own/max"] = lambda i, w=w: dense[i] + w * norm(bm25_own[i])
            systems[f"centred + {w}·bm25own/max"] = lambda i, w=w: centred[i] + w * norm(bm25_own[i])

        for w in (0.1, 0.2, 0.3, 0.5):
            systems[f"centred + {w}·bm25own/ideal"] = lambda i, w=w: centred[i] + w * np.minimum(bm25_ideal[i], 1.0)
        for w in (0.1, 0.2):
            for bonus in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4):
                systems[f"centred + {w}·bm25own/max + bonus {bonus}"] = (
                    lambda i, w=w, b=bonus: centred[i] + w * norm(bm25_own[i]) + b * (chunk_lang == q_lang[i])
                )
    for bonus in (0.1, 0.15, 0.2):
        systems[f"centred + own-lang bonus {bonus}"] = lambda i, b=bonus: centred[i] + b * (chunk_lang == q_lang[i])

    # own-language preference by translation: an other-language candidate whose nearest chunk in
    # the query's language is a near-duplicate (centred cosine >= tau) hands its score to it
    by_lang_idx = {lang: np.flatnonzero(chunk_lang == lang) for lang in set(chunk_lang)}

    def prefer_factory(tau: float, depth: int = 60):
        def prefer(i, scores, allowed):
            s = scores if allowed is None else np.where(allowed, scores, -np.inf)
            top = np.argpartition(-s, depth)[:depth]
            top = top[np.argsort(-s[top])]
            own_idx = by_lang_idx.get(q_lang[i])
            out = s.copy()
            if own_idx is None:
                return out
            if allowed is not None:
                own_idx = own_idx[allowed[own_idx]]
            sims = vc[top] @ vc[own_idx].T  # (depth, own chunks)
            best = sims.argmax(axis=1)
            for n, c in enumerate(top):
                if chunk_lang[c] == q_lang[i]:
                    continue
                if sims[n, best[n]] >= tau:
                    t = own_idx[best[n]]
                    out[t] = max(out[t], s[c] + 1e-4)
                    out[c] = s[c] - 2.0  # the translation stands in; this version goes behind
            return out

        return prefer

    prefs = {f"tau {t} depth {d}": prefer_factory(t, d) for t in (0.4, 0.5, 0.6, 0.7) for d in (60, 150, 300)}
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for name, fn in systems.items():
        if only is None or name in only:
            rows.append(evaluate(name, fn, queries, docs, doc_ids, chunk_lang, langs))
        for pname, pref in prefs.items():
            if only is not None and f"{name} + {pname}" in only:
                rows.append(evaluate(f"{name} + {pname}", fn, queries, docs, doc_ids, chunk_lang, langs, pref))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
