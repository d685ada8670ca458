"""How often the question's language is read wrong: fastText alone vs ``dominant_language``.

    python bench/question_language.py [--languages de,zh]

Reads every question of the xquad dev split (7,584 in 12 languages), prints the error count of
each method, the ratio, the seconds each took, and the questions ``dominant_language`` gets wrong.
"""

from __future__ import annotations

import argparse
import time

from common import XQUAD, read_jsonl

from rag.language import dominant_language, language_identifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--languages", help="comma-separated question languages (default: all)")
    args = parser.parse_args()
    wanted = set(args.languages.split(",")) if args.languages else None
    questions = [q for q in read_jsonl(XQUAD / "queries_dev.jsonl") if wanted is None or q["lang"] in wanted]
    lid = language_identifier()
    lid.warm_up()
    results = {}
    for name, detect in (("fastText alone", lid.detect), ("dominant_language", lambda t: dominant_language(lid, t))):
        start = time.perf_counter()
        wrong = [(q["lang"], detect(q["question"]), q["question"]) for q in questions]
        wrong = [w for w in wrong if w[0] != w[1]]
        results[name] = (wrong, time.perf_counter() - start)
    base = len(results["fastText alone"][0])
    for name, (wrong, seconds) in results.items():
        ratio = f"{len(wrong) / base:.2f}" if base else "-"
        print(f"{name:18} {len(wrong):4} wrong of {len(questions)} ({100 * len(wrong) / len(questions):.2f} %), "
              f"x{ratio} of fastText's errors, {seconds:.1f} s")  # fmt: skip
    for gold, got, text in results["dominant_language"][0]:
        print(f"  {gold} -> {got}: {text}")


if __name__ == "__main__":
    main()
