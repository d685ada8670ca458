"""First-stage retrieval at 10^4-10^6 chunks, embedded and on a Chroma server, against plain
dense search in the same run; memory per process; how soon another writer's file is found.

    python bench/scale.py [--sizes 10000,100000,1000000] [--modes embedded,server] [--queries 48] [--json OUT]

The collection grows through the sizes (the chunks of bench/scale_data.py: xquad dev sentences
recombined, vectors cached), written with the ingestion job's bookkeeping. At each size:
- ``Pipeline.retrieve`` p50/p95 with the default first stage (centring + BM25 in the query's
  language) and with plain dense search (mode dense, no centring), the query vector cached so
  that the first stage is timed alone, plus the query embedding's own time (xquad dev questions
  in 12 languages, each asked twice, the two pipelines interleaved, each first half the time);
- RSS and USS (private memory) of this process, which holds both pipelines;
- the keyword index's catch-up with the new chunks (the store's change feed applied to the local
  tantivy index; a query meanwhile uses the index as it was);
- one file written by another writer (server mode: another process; embedded: this process's
  store behind the pipeline's back, found the same way): seconds until a query finds it by its
  keyword, and the cost of the first query after the change against the median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from common import CPU_CONFIG, ROOT, XQUAD, read_jsonl
from scale_data import documents, sentences

from ingestion.job import write_documents
from rag import Pipeline, load_settings
from rag.store import ManifestEntry
from rag.types import Chunk

COLLECTION = "bench-scale"
NEEDLE = "Die Prüfnummer Zaunkönig-{n} steht auf dem Typenschild der Kaffeemaschine."
WRITER = """
import sys, json, time, numpy as np
sys.path.insert(0, {root!r})
from ingestion.job import write_documents
from rag.config import StoreConfig
from rag.store import ChromaStore, ManifestEntry
from rag.types import Chunk
text, source, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = ChromaStore(StoreConfig(url={url!r}))
chunk = Chunk(id=source + "#0", text=text, source=source, index=0, start=0, end=len(text), language="de", doc_hash=source)
vector = np.random.default_rng(1).standard_normal((1, dim)).astype(np.float32)
write_documents(store, {collection!r}, [(ManifestEntry(source, source, (chunk.id,), "done", language="de"), [chunk], vector)])
print(json.dumps({{"written_at": time.time()}}))
"""


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in info]
    return f"{name} ({os.cpu_count()} CPUs; {', '.join(flags) or 'no AVX-512'}; {platform.machine()})"


def ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"p50_ms": round(statistics.median(xs) * 1000, 2), "p95_ms": round(xs[int(0.95 * (len(xs) - 1))] * 1000, 2)}


def start_chroma(path: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "chroma"), "run", "--path", str(path), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"chroma run did not start on {url}")


def pipelines(mode: str, work: Path, url: str | None, embedder, language) -> tuple[Pipeline, Pipeline]:
    settings = load_settings(CPU_CONFIG)
    settings.store.path = work / "chroma"
    settings.store.url = url
    settings.store.index_dir = work / "index"
    default = Pipeline(settings, embedder=embedder, language=language)
    plain_settings = settings.model_copy(deep=True)
    plain_settings.retrieval.mode = "dense"
    plain_settings.retrieval.centring = False
    plain = Pipeline(plain_settings, embedder=embedder, language=language, store=default.store)
    return default, plain


def measure(mode: str, sizes: list[int], questions: list[str], source, embedder, language) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix=f"babelrag-scale-{mode}-"))
    chroma, url = start_chroma(work / "server") if mode == "server" else (None, None)
    rows = []
    rag = plain = None
    try:
        rag, plain = pipelines(mode, work, url, embedder, language)
        store = rag.store
        store.ensure_collection(COLLECTION, fingerprint={"embedding_model": embedder.model_id, "dimension": 384})
        stream = documents(source, sizes[-1])
        written = 0
        for n, size in enumerate(sizes):
            started = time.perf_counter()
            batch: list = []
            while written < size:
                doc = next(stream)
                batch.append(doc)
                written += len(doc[1])
                if len(batch) == 50 or written >= size:  # 1,000 chunks a write, as a job's batches
                    write_documents(store, COLLECTION, batch)
                    batch = []
            fill_s = time.perf_counter() - started
            row = {"mode": mode, "chunks": size, "fill_chunks_per_s": round((size - (sizes[n - 1] if n else 0)) / fill_s)}
            t = time.perf_counter()
            rag.retriever.keyword.refresh(COLLECTION)  # the local keyword index catches up with the new chunks
            row["keyword_catch_up_s"] = round(time.perf_counter() - t, 2)
            # the keyword index folder: tantivy's files, the chunks' fields and the vector file
            row["index_mb"] = round(sum(f.stat().st_size for f in (work / "index").rglob("*") if f.is_file()) / 2**20)
            for q in questions:  # warm the query-vector caches: the first stage is timed alone
                rag.retrieve(q, collection=COLLECTION)
                plain.retrieve(q, collection=COLLECTION)
            times: dict[str, list[float]] = {"default": [], "dense": [], "embed": []}
            for _ in range(2):
                for i, q in enumerate(questions):
                    # each goes first (right after the previous question's embedding call) half the time
                    turns = (("default", rag), ("dense", plain))
                    for name, p in turns if i % 2 == 0 else turns[::-1]:
                        t = time.perf_counter()
                        p.retrieve(q, collection=COLLECTION)
                        times[name].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    embedder.embed_queries([q])
                    times["embed"].append(time.perf_counter() - t)
            for name, xs in times.items():
                row[name] = ms(xs)
            row["default_over_dense_p50"] = round(row["default"]["p50_ms"] / row["dense"]["p50_ms"], 2)
            row["default_over_dense_p95"] = round(row["default"]["p95_ms"] / row["dense"]["p95_ms"], 2)
            embed = row["embed"]["p50_ms"]
            row["with_embedding_over_dense"] = round(
                (row["default"]["p50_ms"] + embed) / (row["dense"]["p50_ms"] + embed), 2
            )
            memory = psutil.Process().memory_full_info()
            row["rss_mb"], row["uss_mb"] = round(memory.rss / 2**20), round(memory.uss / 2**20)
            row.update(visibility(rag, mode, url, n))
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for p in (plain, rag):  # their version watchers stop before the server does
            if p is not None:
                p.close()
        if chroma is not None:
            chroma.terminate()
            chroma.wait(timeout=60)
    return rows


def visibility(rag: Pipeline, mode: str, url: str | None, n: int) -> dict:
    text, source = NEEDLE.format(n=4711 + n), f"/bench/needle-{n}.txt"
    question = f"Wo steht die Prüfnummer Zaunkönig-{4711 + n}?"
    normal = []
    for _ in range(5):
        t = time.perf_counter()
        rag.retrieve(question, collection=COLLECTION, top_k=1)
        normal.append(time.perf_counter() - t)
    if mode == "server":
        code = WRITER.format(root=str(ROOT), url=url, collection=COLLECTION)
        out = subprocess.run([sys.executable, "-c", code, text, source, "384"], capture_output=True, text=True, check=True)
        written_at = json.loads(out.stdout)["written_at"]
    else:
        chunk = Chunk(id=source + "#0", text=text, source=source, index=0, start=0, end=len(text), language="de",
                      doc_hash=source)  # fmt: skip
        vector = np.random.default_rng(1).standard_normal((1, 384)).astype(np.float32)
        write_documents(rag.store, COLLECTION, [(ManifestEntry(source, source, (chunk.id,), "done"), [chunk], vector)])
        written_at = time.time()
    first: float | None = None
    while True:
        t = time.perf_counter()
        hits = rag.retrieve(question, collection=COLLECTION, top_k=1)
        if first is None:
            first = time.perf_counter() - t
        if hits and hits[0].chunk.text == text:
            return {
                "visible_after_s": round(time.time() - written_at, 2),
                "first_query_after_write_ms": round(first * 1000, 1),
                "first_query_over_normal": round(first / statistics.median(normal), 2),
            }
        if time.time() - written_at > 60:
            return {"visible_after_s": None, "first_query_after_write_ms": round(first * 1000, 1)}
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--modes", default="embedded,server")
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows = read_jsonl(XQUAD / "queries_dev.jsonl")
    questions = [r["question"] for r in rows[:: max(1, len(rows) // args.queries)]][: args.queries]

    boot = Pipeline(load_settings(CPU_CONFIG))
    embedder, language = boot.embedder, boot.language
    embedder.embed_queries(["warm up"])
    t = time.perf_counter()
    source = sentences(embedder)
    print(f"CPU: {cpu()}; embedding {embedder.model_id} ({embedder.dtype})")
    print(f"{sum(len(v) for v in source.texts.values())} dev sentences in {len(source.languages)} languages "
          f"({time.perf_counter() - t:.1f} s, cached in bench/scale_data.CACHE)")  # fmt: skip
    results = []
    for mode in args.modes.split(","):
        results += measure(mode, sizes, questions, source, embedder, language)
    print()
    print(f"{'mode':9s} {'chunks':>9s} {'default p50/p95':>17s} {'dense p50/p95':>15s} {'embed p50':>9s} "
          f"{'def/dense p95':>13s} {'RSS/USS MB':>11s} {'visible s':>9s} {'next query':>10s}")  # fmt: skip
    for r in results:
        print(
            f"{r['mode']:9s} {r['chunks']:>9,} {r['default']['p50_ms']:>8.1f}/{r['default']['p95_ms']:<8.1f}"
            f"{r['dense']['p50_ms']:>7.1f}/{r['dense']['p95_ms']:<7.1f} {r['embed']['p50_ms']:>9.1f} "
            f"{r['default_over_dense_p95']:>12.2f}x {r['rss_mb']:>5}/{r['uss_mb']:<5} {r['visible_after_s']!s:>9} "
            f"{r.get('first_query_over_normal', '-')!s:>9}x"
        )
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
