"""Chunk sizes per language: what the real chunker makes of every xquad paragraph.

    python bench/chunks.py [--corpus ../shared/data/xquad/corpus.jsonl] [--config configs/cpu-small.yaml]
                           [--max-tokens 128] [--overlap 16] [--json PATH]

Chunks each paragraph with ingestion.chunker.SentenceChunker and the embedding model's tokenizer
(only the tokenizer is loaded), then prints per language: chunks, text tokens per chunk
(min / p50 / p95 / max), the longest full model input (document prompt + embedding_text, special
tokens included), and how many chunks end inside a sentence -- a sentence longer than
max_tokens cut at token boundaries, often where the sentence splitter missed a boundary -- or
inside a word. A second table shows what the sentence splitter made of each language.

Exits with status 1 if any model input exceeds the model's max_seq_length (it would be truncated).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

import rag  # noqa: F401  # first: importing ingestion.chunker before rag is a circular import
from ingestion.chunker import SentenceChunker, tokenizer_spans
from rag.text import sentence_spans
from rag import load_settings
from rag.config import ChunkingConfig
from rag.models import resolve_model
from rag.types import Document

REPO = Path(__file__).resolve().parents[1]
TINY = 16  # tokens; a chunk this small says little on its own


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile of sorted ``values``."""
    return values[max(math.ceil(q / 100 * len(values)) - 1, 0)]


def inside_word(text: str, offset: int) -> bool:
    """Between two letters, digits or combining marks (Devanagari vowel signs are marks)."""
    return 0 < offset < len(text) and all(unicodedata.category(ch)[0] in "LMN" for ch in text[offset - 1 : offset + 1])


def max_seq_length(model_dir: Path, tokenizer) -> int:
    config = model_dir / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
        if value:
            return int(value)
    return int(tokenizer.model_max_length)


def main() -> None:
    defaults = ChunkingConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared/data/xquad/corpus.jsonl")
    parser.add_argument("--config", type=Path, default=REPO / "configs/cpu-small.yaml")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--overlap", type=int, default=defaults.overlap_tokens)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()

    embedding = load_settings(args.config).embedding
    model_dir = Path(resolve_model(embedding.model, role="embedding", setting="BABELRAG_EMBEDDING_MODEL"))
    import transformers

    transformers.utils.logging.set_verbosity_error()  # whole paragraphs are counted, some over 512
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    limit = max_seq_length(model_dir, tokenizer)
    prompt = embedding.document_prompt or ""
    chunker = SentenceChunker(
        tokenizer_spans(tokenizer), ChunkingConfig(max_tokens=args.max_tokens, overlap_tokens=args.overlap)
    )

    def count(text: str, special: bool = False) -> int:
        return len(tokenizer(text, add_special_tokens=special)["input_ids"])

    stats: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    too_long: list[tuple[str, int]] = []
    for line in args.corpus.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        text = row["text"]
        s = stats[row["lang"]]
        sentences = sentence_spans(text)
        sentence_ends = {e for _, e in sentences}
        s["sentences"].append(len(sentences))
        s["sentence_tokens"] += [count(text[a:b]) for a, b in sentences]
        s["paragraph_tokens"].append(count(text))
        document = Document(source=f"/xquad/{row['doc_id']}.txt", text=text, content_hash="x", title=None)
        chunks = chunker.chunk(document)
        s["chunks"].append(len(chunks))
        for chunk in chunks:
            s["tokens"].append(count(chunk.text))
            model_input = count(prompt + chunk.embedding_text, special=True)
            s["model_input"].append(model_input)
            s["cut"].append(chunk.end not in sentence_ends)
            s["mid_word"].append(inside_word(text, chunk.start) or inside_word(text, chunk.end))
            if model_input > limit:
                too_long.append((row["doc_id"], model_input))

    summary = {}
    for lang in sorted(stats):
        s = stats[lang]
        tokens, sentence_tokens = sorted(s["tokens"]), sorted(s["sentence_tokens"])
        summary[lang] = {
            "paragraphs": len(s["chunks"]),
            "chunks": len(tokens),
            "tokens_min": tokens[0],
            "tokens_p50": percentile(tokens, 50),
            "tokens_p95": percentile(tokens, 95),
            "tokens_max": tokens[-1],
            "chunks_over_max_tokens": sum(t > args.max_tokens for t in tokens),
            "chunks_under_16_tokens": sum(t < TINY for t in tokens),
            "model_input_max": max(s["model_input"]),
            "cut_in_sentence": sum(s["cut"]),
            "cut_in_word": sum(s["mid_word"]),
            "sentences_per_paragraph": sum(s["sentences"]) / len(s["sentences"]),
            "sentence_tokens_p50": percentile(sentence_tokens, 50),
            "sentence_tokens_max": sentence_tokens[-1],
            "sentences_over_max_tokens": sum(t > args.max_tokens for t in sentence_tokens),
            "sentences_of_1_or_2_tokens": sum(t <= 2 for t in sentence_tokens),
            "paragraph_tokens_p50": percentile(sorted(s["paragraph_tokens"]), 50),
        }

    print(
        f"tokenizer {model_dir.name}, max_tokens {args.max_tokens}, overlap {args.overlap}, "
        f"document prompt {prompt!r}, max_seq_length {limit}\n"
    )
    print("chunks    text tokens per chunk          model input")
    print(
        f"{'lang':4s}{'chunks':>7s}{'min':>6s}{'p50':>5s}{'p95':>5s}{'max':>5s}{'>max':>6s}{'<16':>5s}{'max':>8s}"
        f"{'cut':>6s}{'in word':>9s}"
    )
    for lang, r in summary.items():
        print(
            f"{lang:4s}{r['chunks']:7d}{r['tokens_min']:6d}{r['tokens_p50']:5d}{r['tokens_p95']:5d}{r['tokens_max']:5d}"
            f"{r['chunks_over_max_tokens']:6d}{r['chunks_under_16_tokens']:5d}{r['model_input_max']:8d}"
            f"{r['cut_in_sentence']:6d}{r['cut_in_word']:9d}"
        )
    print(f"  >max: chunks whose text re-tokenizes to more than max_tokens; <16: chunks under {TINY} tokens;")
    print("  model input: prompt + embedding_text + special tokens; cut: chunks ending inside a sentence (one over")
    print("  max_tokens, cut at token boundaries); in word: chunks starting or ending between two letters/marks")
    print("  (th and zh write no spaces, so there every cut counts)\n")
    print("sentences (ingestion.chunker.sentence_spans)")
    print(
        f"{'lang':4s}{'paras':>6s}{'tok/para p50':>13s}{'sent/para':>10s}{'tok p50':>8s}{'tok max':>8s}{'>max':>6s}"
        f"{'<=2 tok':>8s}"
    )
    for lang, r in summary.items():
        print(
            f"{lang:4s}{r['paragraphs']:6d}{r['paragraph_tokens_p50']:13d}{r['sentences_per_paragraph']:10.1f}"
            f"{r['sentence_tokens_p50']:8d}{r['sentence_tokens_max']:8d}{r['sentences_over_max_tokens']:6d}"
            f"{r['sentences_of_1_or_2_tokens']:8d}"
        )
    print("  >max: sentences over max_tokens (cut into windows); <=2 tok: fragments such as 'W.' or '8.', split")
    print("  off at initials, abbreviations and ordinals, or Thai phrases split at spaces")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": model_dir.name,
                    "max_tokens": args.max_tokens,
                    "overlap_tokens": args.overlap,
                    "document_prompt": prompt,
                    "max_seq_length": limit,
                    "inputs_over_max_seq_length": too_long,
                    "languages": summary,
                },
                indent=1,
            ),
            encoding="utf-8",
        )
        print(f"wrote {args.json}")
    if too_long:
        worst = max(too_long, key=lambda item: item[1])
        sys.exit(
            f"FAIL: {len(too_long)} chunk(s) need more than max_seq_length {limit} tokens and would be truncated "
            f"(longest: {worst[0]}, {worst[1]} tokens); lower --max-tokens or shorten the document prompt"
        )


if __name__ == "__main__":
    main()
