"""Prefill and decode speed of LLM servers, and the ratio to the first one.

    python bench/llm.py --base-url http://127.0.0.1:8011/v1 --base-url http://127.0.0.1:8012/v1

Each server gets the same prompts: xquad paragraphs as sources (about ``--prompt-tokens``
tokens, each prompt different so that no prefix cache helps) and a short answer
(``--max-tokens``). Prints, per server: median time to the first token, prompt tokens per
second (prompt tokens over that time), decode tokens per second (after the first token).
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import XQUAD, read_jsonl

from rag.config import LLMConfig
from rag.llm import LLMClient


def prompts(n: int, words: int) -> list[list[dict[str, str]]]:
    paragraphs = [d["text"] for d in read_jsonl(XQUAD / "corpus.jsonl") if d["lang"] == "en"]
    out = []
    for i in range(n):
        text, j = "", i * 7
        while len(text.split()) < words:
            text += f"[{j % 5 + 1}] {paragraphs[j % len(paragraphs)]}\n\n"
            j += 1
        out.append(
            [{"role": "user", "content": f"Sources:\n\n{text}Question: what is source [1] about? Answer briefly."}]
        )
    return out


def measure(url: str, model: str, messages: list[list[dict[str, str]]], max_tokens: int) -> dict[str, float]:
    client = LLMClient(LLMConfig(base_url=url, model=model, timeout_s=600, max_retries=0))
    firsts, prefill, decode = [], [], []
    for m in messages:
        start = time.perf_counter()
        stream = client.stream_chat(m, max_tokens=max_tokens)
        first = None
        for _ in stream:
            first = first or time.perf_counter() - start
        total = time.perf_counter() - start
        firsts.append(first or total)
        prefill.append(stream.usage.prompt_tokens / (first or total))
        if stream.usage.completion_tokens > 1 and first:
            decode.append((stream.usage.completion_tokens - 1) / (total - first))
    return {
        "first_token_s": statistics.median(firsts),
        "prefill_tok_s": statistics.median(prefill),
        "decode_tok_s": statistics.median(decode) if decode else float("nan"),
        "prompt_tokens": stream.usage.prompt_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", action="append", required=True, help="an OpenAI-compatible /v1 URL (repeat)")
    parser.add_argument("--model", required=True, help="the served model name (llm.model)")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--prompt-words", type=int, default=350)
    parser.add_argument("--max-tokens", type=int, default=40)
    args = parser.parse_args()
    messages = prompts(args.prompts, args.prompt_words)
    results = [(url, measure(url, args.model, messages, args.max_tokens)) for url in args.base_url]
    base = results[0][1]
    print(
        f"{'server':32} {'prompt tok':>10} {'first token s':>13} {'prefill tok/s':>13} {'decode tok/s':>12} {'prefill x':>9}"
    )
    for url, r in results:
        print(f"{url:32} {r['prompt_tokens']:>10} {r['first_token_s']:>13.1f} {r['prefill_tok_s']:>13.1f} "
              f"{r['decode_tok_s']:>12.1f} {r['prefill_tok_s'] / base['prefill_tok_s']:>9.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
