"""Which persistent keyword index: tantivy, SQLite FTS5 or bm25s, on the same chunks, in one run.

    python bench/keyword_engines.py [--sizes 100000,1000000] [--queries 48] [--json OUT]

The chunks of bench/scale_data.py (xquad dev sentences recombined; texts only, no model needed
beyond its cached sentence list), tokenized once by rag.keyword.tokenize; each engine indexes the
same tokens and answers the same xquad dev questions restricted to the question's language, as
the hybrid first stage asks. Per engine: build seconds, size on disk, query p50/p95, and the
memory a reading process holds (RSS growth to open and query it). FTS5 gets the tokens as hex
words (its ASCII tokenizer then splits on nothing else) and a language column; bm25s scores
everything and masks by language, as rag.keyword did before issue 13.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from common import XQUAD, read_jsonl
from scale_data import documents, sentences

from rag.keyword import KeywordIndex, tokenize


def rss() -> float:
    return psutil.Process().memory_info().rss / 2**20


def ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"p50_ms": round(statistics.median(xs) * 1000, 2), "p95_ms": round(xs[int(0.95 * (len(xs) - 1))] * 1000, 2)}


def folder_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = read_jsonl(XQUAD / "queries_dev.jsonl")
    questions = [(r["question"], r["lang"]) for r in rows[:: max(1, len(rows) // args.queries)]][: args.queries]
    from common import CPU_CONFIG

    from rag import Pipeline, load_settings

    source = sentences(Pipeline(load_settings(CPU_CONFIG)).embedder)
    results = []
    for size in sorted(int(s) for s in args.sizes.split(",")):
        ids, texts, langs = [], [], []
        for _, chunks, _ in documents(source, size):
            for c in chunks:
                ids.append(c.id)
                texts.append(c.text)
                langs.append(c.language)
        t = time.perf_counter()
        tokens = [tokenize(x, lang) for x, lang in zip(texts, langs, strict=True)]
        tokenize_s = time.perf_counter() - t
        work = Path(tempfile.mkdtemp(prefix="babelrag-kw-"))
        for engine in ("tantivy", "sqlite-fts5", "bm25s"):
            gc.collect()
            before = rss()
            t = time.perf_counter()
            search = build(engine, work / engine, ids, texts, tokens, langs)
            build_s = time.perf_counter() - t
            lat = []
            for q, lang in questions * 2:
                t = time.perf_counter()
                search(q, lang)
                lat.append(time.perf_counter() - t)
            row = {"engine": engine, "chunks": size, "build_s": round(build_s, 1), "disk_mb": folder_mb(work / engine),
                   "reader_rss_mb": round(rss() - before), **ms(lat)}  # fmt: skip
            results.append(row)
            print(json.dumps(row), flush=True)
            del search
        shutil.rmtree(work, ignore_errors=True)
        print(f"tokenizing {size} chunks: {tokenize_s:.1f} s (every engine's input)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def build(engine: str, path: Path, ids, texts, tokens, langs):
    path.mkdir(parents=True)
    if engine == "tantivy":
        index = KeywordIndex.build(path, ids, texts, langs)

        def search(q, lang):
            return index.search(q, language=lang, top_k=20, languages=[lang])

        return search
    if engine == "sqlite-fts5":
        con = sqlite3.connect(path / "kw.sqlite", check_same_thread=False)
        con.execute("create virtual table kw using fts5(body, lang unindexed, tokenize='ascii', detail=column)")
        con.executemany(
            "insert into kw(rowid, body, lang) values (?, ?, ?)",
            ((i, " ".join(t.encode().hex() for t in tk), lang) for i, (tk, lang) in enumerate(zip(tokens, langs))),
        )
        con.commit()

        def search(q, lang):
            terms = sorted(set(tokenize(q, lang)))
            if not terms:
                return []
            expr = " OR ".join(f'"{t.encode().hex()}"' for t in terms)
            sql = "select rowid, bm25(kw) from kw where kw match ? and lang = ? order by bm25(kw) limit 20"
            return con.execute(sql, (expr, lang)).fetchall()

        return search
    import bm25s

    bm25 = bm25s.BM25()
    bm25.index(tokens, show_progress=False)
    bm25.save(path, show_progress=False)
    language = np.array(langs)

    def search(q, lang):
        token_ids = bm25.get_tokens_ids(tokenize(q, lang))
        if not token_ids:
            return []
        scores = bm25.get_scores_from_ids(token_ids, weight_mask=language == lang)
        return np.argpartition(-scores, 20)[:20]

    return search


if __name__ == "__main__":
    main()
