"""Answers at once: N questions through ``Pipeline.aask`` in one event loop against N through
``Pipeline.ask`` one after another, same pipeline, same server, same run.

    python bench/async_api.py --llm-base-url http://127.0.0.1:8011/v1 [--n 8]

Ingests the sample handbook into a throwaway store, warms both paths up, then prints the wall
time of each, answers per minute, and the ratio (sequential / concurrent). vLLM batches the
concurrent requests, so the ratio is what one ``babelrag serve`` process gains from the async API
when several people ask at once; retrieval runs in worker threads, the LLM streams on the async
client (no thread per stream).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml
from common import CPU_CONFIG, ROOT, scratch_pipeline

from rag import QueryOptions


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-base-url", required=True)
    parser.add_argument("--n", type=int, default=8, help="questions per path (cycling over the 8 languages)")
    parser.add_argument("--config", type=Path, default=CPU_CONFIG)
    args = parser.parse_args()
    questions = yaml.safe_load((ROOT / "examples" / "questions.yaml").read_text(encoding="utf-8"))
    asked = [questions[i % len(questions)]["question"] for i in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BABELRAG_LLM_BASE_URL"] = args.llm_base_url
        with scratch_pipeline(args.config, Path(tmp) / "chroma") as rag:
            rag.ingest([ROOT / "examples" / "handbook"], "handbook")
            options = QueryOptions(collection="handbook")
            rag.ask(asked[0], options)  # warm up: models, tokenizer, server
            t0 = time.perf_counter()
            sequential = [rag.ask(q, options) for q in asked]
            t_seq = time.perf_counter() - t0

            async def concurrent():
                return await asyncio.gather(*(rag.aask(q, options) for q in asked))

            t0 = time.perf_counter()
            at_once = asyncio.run(concurrent())
            t_async = time.perf_counter() - t0
    tokens = lambda answers: sum(a.usage.completion_tokens for a in answers)
    print(f"CPU: {cpu_name()}; {args.n} questions, server {args.llm_base_url}")
    print(f"{'path':<26}{'wall s':>9}{'answers/min':>13}{'completion tokens':>19}")
    print(f"{'ask, one after another':<26}{t_seq:>9.1f}{60 * args.n / t_seq:>13.1f}{tokens(sequential):>19}")
    print(f"{'aask, all at once':<26}{t_async:>9.1f}{60 * args.n / t_async:>13.1f}{tokens(at_once):>19}")
    print(f"ratio (sequential / concurrent wall time): {t_seq / t_async:.2f}x")


if __name__ == "__main__":
    main()
