"""Embedding speed and fidelity of each embedding backend against torch fp32, in one run.

    python bench/embed.py [--n 96] [--queries 40] [--rounds 3] [--backends torch-bf16,onnx-int8,...] [--json PATH]

Every variant is loaded in this one process (exports are made first if missing; their time is
"load s"), then, round after round, each variant embeds the same N xquad paragraphs (12
languages interleaved, "passage: " prompt, batch 32) and encodes Q dev questions one at a time
("query: " prompt). On a shared machine the speed drifts within seconds, so the ratio to torch
fp32 is the median of per-round ratios, each measured minutes apart at most. Cosine: each
passage's vector against torch fp32's vector of the same passage. "RSS +MB": resident memory
added by loading the variant (after the torch weights an export replaces were dropped).

On a CPU without native bf16 (no AVX512-BF16/AMX, like this project's CI machine), bf16 is
emulated and ~5x slower than fp32; ``embedding.dtype: auto`` picks fp32 there, and torch-bf16 is
left out of the default list unless the CPU has it.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import psutil
from common import EMBEDDING_VARIANTS as VARIANTS
from common import XQUAD, read_jsonl

from rag import load_settings
from rag.embedder import SentenceTransformerEmbedder, cpu_has_native_bf16


def cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = [
        f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in info
    ]
    return f"{model}; {psutil.cpu_count()} CPUs; flags: {' '.join(flags)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=XQUAD / "corpus.jsonl")
    parser.add_argument("--queries-file", type=Path, default=XQUAD / "queries_dev.jsonl")
    parser.add_argument("--n", type=int, default=96, help="paragraphs embedded per round")
    parser.add_argument("--queries", type=int, default=40, help="questions encoded one at a time per round")
    parser.add_argument("--rounds", type=int, default=3)
    default = [v for v in VARIANTS if v != "torch-bf16" or cpu_has_native_bf16()]
    parser.add_argument("--backends", default=",".join(default), help="torch-fp32 is always measured, first")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = ["torch-fp32", *[b for b in args.backends.split(",") if b and b != "torch-fp32"]]
    unknown = [b for b in names if b not in VARIANTS]
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(VARIANTS)}")

    by_lang: dict[str, list[str]] = {}
    for row in read_jsonl(args.corpus):
        by_lang.setdefault(row["lang"], []).append(row["text"])
    texts = [t for group in zip(*by_lang.values()) for t in group][: args.n]
    questions = [q["question"] for q in read_jsonl(args.queries_file)][::7][: args.queries]
    print(f"CPU: {cpu()}")
    print(f"{len(texts)} xquad paragraphs ({len(by_lang)} languages), {len(questions)} questions, {args.rounds} rounds")

    settings = load_settings()
    process = psutil.Process()
    embedders, loaded = {}, {}
    for name in names:
        gc.collect()
        before = process.memory_info().rss
        start = time.perf_counter()
        embedder = SentenceTransformerEmbedder(settings.embedding.model_copy(update=VARIANTS[name]))
        embedder.embed_documents(texts[:8])  # load (export if needed) and warm up
        gc.collect()
        loaded[name] = {"load_s": time.perf_counter() - start, "rss_mb": (process.memory_info().rss - before) / 2**20}
        embedders[name] = embedder
        print(f"loaded {name} ({embedder.backend}, {embedder.dtype}) in {loaded[name]['load_s']:.1f} s", flush=True)

    rates: dict[str, list[float]] = {n: [] for n in names}
    latencies: dict[str, list[float]] = {n: [] for n in names}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for name, embedder in embedders.items():
            start = time.perf_counter()
            vectors[name] = embedder.embed_documents(texts)
            rates[name].append(len(texts) / (time.perf_counter() - start))
            for q in questions:
                start = time.perf_counter()
                embedder.embed_queries([q])
                latencies[name].append(time.perf_counter() - start)

    base = np.array(rates["torch-fp32"])
    rows = {}
    print(
        f"\n{'backend':<20}{'passages/s':>11}{'x fp32':>8}{'query p50':>10}{'p95 ms':>8}{'cos mean':>10}{'cos min':>9}"
        f"{'RSS +MB':>9}{'load s':>8}"
    )
    for name in names:
        cos = (vectors[name] * vectors["torch-fp32"]).sum(1) / np.linalg.norm(vectors[name], axis=1)
        lat = np.array(latencies[name]) * 1000
        rows[name] = {
            "backend": embedders[name].backend,
            "dtype": embedders[name].dtype,
            "passages_per_s": round(statistics.median(rates[name]), 2),
            "ratio_to_torch_fp32": round(float(np.median(np.array(rates[name]) / base)), 3),
            "query_p50_ms": round(float(np.percentile(lat, 50)), 1),
            "query_p95_ms": round(float(np.percentile(lat, 95)), 1),
            "cos_mean": round(float(cos.mean()), 5),
            "cos_min": round(float(cos.min()), 5),
            "rss_added_mb": round(loaded[name]["rss_mb"]),
            "load_s": round(loaded[name]["load_s"], 1),
        }
        r = rows[name]
        print(
            f"{name:<20}{r['passages_per_s']:>11.1f}{r['ratio_to_torch_fp32']:>8.2f}{r['query_p50_ms']:>10.1f}"
            f"{r['query_p95_ms']:>8.1f}{r['cos_mean']:>10.5f}{r['cos_min']:>9.5f}{r['rss_added_mb']:>9}{r['load_s']:>8.1f}"
        )
    peak = process.memory_info().rss / 2**20
    print(f"process RSS at the end {peak:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu(), "n": len(texts), "rounds": args.rounds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
