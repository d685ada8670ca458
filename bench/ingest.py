"""Ingestion throughput against the bare encoder, in the same run.

    python bench/ingest.py [--corpus ../shared/data/xquad/corpus.jsonl] [--paragraphs N] [--json OUT]

Writes every corpus paragraph to its own .txt file (2,880 files in 12 languages), then:
1. ``babelrag ingest``'s code path (``Pipeline.ingest``: discover, hash, load, chunk with the
   model's tokenizer, language id per chunk, embed, upsert into a fresh embedded Chroma,
   manifest), timed from the call to the report, models already loaded;
2. the bare ``SentenceTransformer.encode_document`` of the same chunk texts, same batch size
   and dtype: the ceiling ingestion can reach.
Prints chunks/s of both, their ratio (goal >= 0.9), a no-op re-run, and peak RSS.
``--backends torch-fp32,onnx-int8,...`` repeats 1-2 per embedding backend (bench/common.py's
names), each into its own fresh store in this one run, and prints ingestion chunks/s relative
to the first.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from common import CPU_CONFIG, EMBEDDING_VARIANTS, XQUAD, read_jsonl, scratch_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=XQUAD / "corpus.jsonl")
    parser.add_argument("--config", type=Path, default=CPU_CONFIG)
    parser.add_argument("--paragraphs", type=int, default=240, help="the first N paragraphs of every language")
    parser.add_argument(
        "--backends",
        default=None,
        help=f"comma-separated, each into its own fresh store, ratios to the first: {', '.join(EMBEDDING_VARIANTS)}; "
        "default: the config's embedder alone",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()
    variants = args.backends.split(",") if args.backends else [None]
    unknown = [v for v in variants if v is not None and v not in EMBEDDING_VARIANTS]
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(EMBEDDING_VARIANTS)}")

    rows = [r for r in read_jsonl(args.corpus) if r["para"] < args.paragraphs]
    work = Path(tempfile.mkdtemp(prefix="babelrag-bench-"))
    for row in rows:
        folder = work / "corpus" / row["lang"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{row['doc_id']}.txt").write_text(row["text"], encoding="utf-8")

    results = {}
    for variant in variants:
        embedding = EMBEDDING_VARIANTS[variant] if variant is not None else None
        rag = scratch_pipeline(args.config, work / f"chroma-{variant or 'config'}", embedding=embedding)
        results[variant or "config"] = measure(rag, work / "corpus", rows, rerun=variant == variants[0])
        del rag
        gc.collect()
    if len(results) > 1:
        first = next(iter(results.values()))["ingest_chunks_per_s"]
        print(f"\n{'backend':<20}{'ingest chunks/s':>16}{'x first':>9}{'bare encode':>13}")
        for name, r in results.items():
            r["ratio_to_first"] = round(r["ingest_chunks_per_s"] / first, 2)
            print(
                f"{name:<20}{r['ingest_chunks_per_s']:>16.1f}{r['ratio_to_first']:>9.2f}{r['bare_encode_chunks_per_s']:>13.1f}"
            )
    if args.json:
        args.json.write_text(json.dumps(results if len(results) > 1 else results[next(iter(results))], indent=2))


def measure(rag, corpus: Path, rows: list[dict], *, rerun: bool) -> dict:
    """Ingest ``corpus`` with ``rag`` (models loaded first), then the bare encoder on its chunks."""
    settings = rag.settings
    warm = rows[0]["text"]
    rag.embedder.embed_documents([warm] * 8)  # load the model and warm up the kernels
    rag.language.detect(warm)
    print(
        f"{len(rows)} files, {len({r['lang'] for r in rows})} languages; embedding {settings.embedding.model} "
        f"({rag.embedder.backend}, {rag.embedder.dtype}, batch {settings.embedding.batch_size}) on {os.cpu_count()} CPUs"
    )

    start = time.perf_counter()
    report = rag.ingest([corpus], "bench")
    ingest_s = time.perf_counter() - start
    assert report.ok, report.failed[:3]
    chunks = rag.store.client.get_collection("bench").get(include=["documents", "metadatas"])
    n = len(chunks["ids"])
    texts = _embedding_texts(chunks)

    start = time.perf_counter()
    rag.embedder.model.encode_document(
        texts,
        prompt=settings.embedding.document_prompt,
        batch_size=settings.embedding.batch_size,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    encode_s = time.perf_counter() - start

    ingest_rate, encode_rate = n / ingest_s, n / encode_s
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    numbers = {
        "backend": rag.embedder.backend,
        "dtype": rag.embedder.dtype,
        "files": len(rows),
        "chunks": n,
        "ingest_s": round(ingest_s, 1),
        "ingest_chunks_per_s": round(ingest_rate, 1),
        "bare_encode_s": round(encode_s, 1),
        "bare_encode_chunks_per_s": round(encode_rate, 1),
        "ratio": round(ingest_rate / encode_rate, 3),
        "peak_rss_mb": round(peak_mb),
    }
    print(f"ingest       {ingest_rate:7.1f} chunks/s  ({n} chunks in {ingest_s:.1f} s)")
    print(f"bare encode  {encode_rate:7.1f} chunks/s  ({encode_s:.1f} s)")
    print(f"ratio        {numbers['ratio']:.2f} x   (goal >= 0.90)")
    if rerun:
        start = time.perf_counter()
        again = rag.ingest([corpus], "bench")
        numbers["rerun_unchanged_s"] = round(time.perf_counter() - start, 2)
        assert len(again.unchanged) == len(rows) and again.chunks_written == 0
        print(f"re-run       {numbers['rerun_unchanged_s']:.2f} s for {len(rows)} unchanged files")
    print(f"peak RSS     {peak_mb:.0f} MB (of the process so far)")
    return numbers


def _embedding_texts(got) -> list[str]:
    """What the embedder read: the chunk text with its title/section context, as Chunk does."""
    from rag.store import _chunk

    return [_chunk(i, d, m).embedding_text for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])]


if __name__ == "__main__":
    main()
