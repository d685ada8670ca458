"""BabelRAG's main job in one command (`make demo`): ingest the 8-language sample handbook
and ask cross-lingual questions, streaming each answer and listing its sources.

Uses the LLM server at llm.base_url; when none answers there, starts vLLM for llm.model with
`babelrag llm serve`'s code and stops it at the end. Config: BABELRAG_CONFIG, else
configs/cpu-small.yaml (a CPU machine with the 0.5B stand-in model).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from rag import BabelRAGError, GenerationError, Pipeline, load_settings
from rag import llm_server

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("BABELRAG_CONFIG", HERE.parent / "configs" / "cpu-small.yaml"))
    parser.add_argument("--questions", type=int, default=4, help="how many of examples/questions.yaml to ask")
    args = parser.parse_args()

    settings = load_settings(args.config, store={"collection": "handbook"})
    rag = Pipeline(settings)
    report = rag.ingest([HERE / "handbook"])
    print(f"ingested {HERE / 'handbook'}: {len(report.added)} added, {len(report.updated)} updated, "
          f"{len(report.unchanged)} unchanged, {report.chunks_written} chunks written")  # fmt: skip

    started = None
    try:
        rag.llm.served_models()
    except GenerationError:
        print(f"no LLM server at {settings.llm.base_url}; starting vLLM for {settings.llm.model} ...", flush=True)
        started = llm_server.start(settings)
    try:
        questions = yaml.safe_load((HERE / "questions.yaml").read_text(encoding="utf-8"))[: args.questions]
        for q in questions:
            print(f"\n=== [{q['lang']}] {q['question']}\n(answer only in {q['expected_file']})\n", flush=True)
            stream = rag.stream(q["question"])
            for piece in stream:
                print(piece, end="", flush=True)
            answer = stream.answer()
            print(f"\n\nanswer language: {answer.language} (question: {answer.question_language})")
            for c in answer.citations:
                print(f"  {'*' if c.cited else ' '}[{c.number}] {c.chunk.file_name} ({c.chunk.language}) "
                      f"chars {c.chunk.start}-{c.chunk.end} score {c.hit.score:.3f}")  # fmt: skip
    finally:
        if started:
            llm_server.stop(settings)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BabelRAGError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
