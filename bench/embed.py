"""Embedding throughput of BabelRAG's embedder, bf16 against an fp32 baseline in the same run.

On a CPU without native bf16 (no AVX512-BF16/AMX, like this project's CI machine), bf16 is
emulated and ~5x slower than fp32; ``embedding.dtype: auto`` picks fp32 there.

    python bench/embed.py [--corpus ../shared/data/xquad/corpus.jsonl] [--n 192]

Embeds the first N paragraphs of the corpus (all 12 languages interleaved) as documents,
prints passages/s per dtype, the ratio, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from rag import load_settings
from rag.embedder import SentenceTransformerEmbedder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/xquad/corpus.jsonl")
    parser.add_argument("--n", type=int, default=192)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.corpus.read_text(encoding="utf-8").splitlines()]
    by_lang: dict[str, list[str]] = {}
    for row in rows:
        by_lang.setdefault(row["lang"], []).append(row["text"])
    texts = [t for group in zip(*by_lang.values()) for t in group][: args.n]

    settings = load_settings()
    rates = {}
    for dtype in ("float32", "bfloat16"):
        embedder = SentenceTransformerEmbedder(settings.embedding.model_copy(update={"dtype": dtype}))
        embedder.embed_documents(texts[:8])  # load and warm up
        start = time.perf_counter()
        embedder.embed_documents(texts)
        rates[dtype] = len(texts) / (time.perf_counter() - start)
        print(f"{dtype:9s} {rates[dtype]:6.1f} passages/s  ({len(texts)} xquad paragraphs, {len(by_lang)} languages)")
    print(f"bf16 / fp32 = {rates['bfloat16'] / rates['float32']:.2f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
