"""The default first stage against plain dense search on a collection bench/scale.py left behind,
for one checkout: run it for two checkouts in turn (old, new, old, new) to compare them on the
same collection and machine, with none of bench/scale.py's writes and embedding calls between.

    python bench/first_stage_pair.py STORE [--checkout PATH] [--url URL] [--rounds 4] [--queries 48]

STORE is a work folder of bench/scale.py (``/tmp/babelrag-scale-*``: its ``chroma`` folder, or
the ``server`` folder behind ``--url`` of a ``chroma run`` on it). ``--checkout`` (default: this
one) is the BabelRAG whose ``rag`` is imported, e.g. a ``git worktree`` of an older commit; its
keyword index goes to STORE/index-<commit>. ``Pipeline.retrieve`` with the query vectors cached,
the two pipelines taking turns first; prints one JSON line: p50 / p95 in ms and their ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--checkout", type=Path, default=HERE)
    parser.add_argument("--url", default=None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--queries", type=int, default=48)
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    sys.path.insert(0, str(checkout))
    import rag
    from rag import Pipeline, load_settings

    if not Path(rag.__file__).resolve().is_relative_to(checkout):
        raise SystemExit(f"imported rag from {rag.__file__}, not from {checkout}: run with that checkout's packages")
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    settings = load_settings(HERE / "configs" / "cpu-small.yaml")
    settings.store.path = args.store / "chroma"
    settings.store.url = args.url
    settings.store.index_dir = args.store / f"index-{commit}"
    default = Pipeline(settings)
    plain_settings = settings.model_copy(deep=True)
    plain_settings.retrieval.mode = "dense"
    plain_settings.retrieval.centring = False
    plain = Pipeline(plain_settings, embedder=default.embedder, language=default.language, store=default.store)
    collection = "bench-scale"
    default.retriever.keyword.refresh(collection)  # type: ignore[attr-defined]
    rows = [json.loads(line) for line in (HERE.parent / "shared/data/xquad/queries_dev.jsonl").read_text().splitlines()]
    questions = [r["question"] for r in rows[:: max(1, len(rows) // args.queries)]][: args.queries]
    for q in questions:  # the query vectors cached: the first stage is timed alone
        default.retrieve(q, collection=collection)
        plain.retrieve(q, collection=collection)
    times: dict[str, list[float]] = {"default": [], "dense": []}
    for n in range(args.rounds):
        turns = [("default", default), ("dense", plain)]
        for q in questions:
            for name, pipeline in turns if n % 2 == 0 else turns[::-1]:
                t = time.perf_counter()
                pipeline.retrieve(q, collection=collection)
                times[name].append(time.perf_counter() - t)
    row: dict[str, object] = {"commit": commit, "mode": "server" if args.url else "embedded",
                              "chunks": default.store.info(collection).count}  # fmt: skip
    for name, xs in times.items():
        xs.sort()
        row[name] = {
            "p50_ms": round(statistics.median(xs) * 1000, 2),
            "p95_ms": round(xs[int(0.95 * (len(xs) - 1))] * 1000, 2),
        }
    for p in ("p50_ms", "p95_ms"):
        row[f"ratio_{p[:3]}"] = round(row["default"][p] / row["dense"][p], 2)  # type: ignore[index]
    print(json.dumps(row))


if __name__ == "__main__":
    main()
