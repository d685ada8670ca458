"""Many small ingestion jobs in one server process: a tokenizer copy per job against copies kept
across jobs (issue #15), in the same run.

    python bench/upload_jobs.py [--jobs 12] [--files 8]

A server ingests each upload as its own job, and each job chunks in a thread of its own. Chunking
needs a private copy of the embedding model's tokenizer (XLM-R's: ~260 MB, ~3 s to copy). Each
variant runs in a fresh child process with the models loaded first, then ``--jobs`` jobs of
``--files`` new one-sentence files (eight languages) through ``ingestion.job.ingest_files``:
- "copy per job": a new ``tokenizer_spans`` for every job, as ``Pipeline`` did before;
- "kept": ``Pipeline``'s own chunker, whose tokenizer copies outlive the job.
Prints seconds per job (median, after the first) and the process's RSS after the first and
the last job, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CPU_CONFIG, ROOT, scratch_pipeline

SENTENCES = {
    "en": "The bicycle cellar behind building B opens at seven in the morning.",
    "de": "Der Fahrradkeller hinter Gebäude B öffnet um sieben Uhr morgens.",
    "ru": "Велосипедный подвал за зданием Б открывается в семь утра.",
    "ar": "يفتح قبو الدراجات خلف المبنى ب في السابعة صباحا.",
    "hi": "भवन बी के पीछे साइकिल तहखाना सुबह सात बजे खुलता है।",
    "th": "ห้องเก็บจักรยานหลังอาคารบีเปิดเวลาเจ็ดโมงเช้า",
    "zh": "B栋后面的自行车地下室早上七点开门。",
    "ja": "B棟の裏にある自転車置き場は朝七時に開きます。",
}
VARIANTS = ("copy per job", "kept")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def child(variant: str, jobs: int, files: int) -> None:
    from ingestion.chunker import SentenceChunker, tokenizer_spans
    from ingestion.job import ingest_files

    with tempfile.TemporaryDirectory() as tmp:
        pipeline = scratch_pipeline(CPU_CONFIG, Path(tmp) / "chroma")
        pipeline.embedder.embed_documents(["warm up"])  # models loaded before the first job
        pipeline.language.detect("warm up")
        languages = list(SENTENCES)
        seconds, memory = [], []
        for job in range(jobs):
            folder = Path(tmp) / f"job{job}"
            folder.mkdir()
            for i in range(files):
                language = languages[i % len(languages)]
                (folder / f"{language}-{i}.txt").write_text(f"{SENTENCES[language]} ({job}.{i})", encoding="utf-8")
            if variant == "kept":
                chunker = pipeline._chunker()
            else:
                chunker = SentenceChunker(tokenizer_spans(pipeline.embedder.tokenizer), pipeline.settings.chunking,
                                          detect_language=pipeline.language.detect)  # fmt: skip
            started = time.perf_counter()
            report = ingest_files([folder], "bench", embedder=pipeline.embedder, store=pipeline.store,
                                  chunker=chunker, config=pipeline.settings.ingestion)  # fmt: skip
            seconds.append(time.perf_counter() - started)
            assert len(report.added) == files, report.failed
            memory.append(rss_mb())
        print(json.dumps({"seconds": seconds, "rss_mb": memory}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.jobs, args.files)
        return
    results = {}
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--jobs", str(args.jobs), "--files", str(args.files)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.jobs} jobs of {args.files} files each, one process per variant, models loaded first")
    print(f"{'variant':<14} {'s/job (median, after the 1st)':>30} {'RSS after job 1':>16} {'RSS after the last':>19}")
    for variant, r in results.items():
        median = statistics.median(r["seconds"][1:])
        print(f"{variant:<14} {median:>30.2f} {r['rss_mb'][0]:>13.0f} MB {r['rss_mb'][-1]:>16.0f} MB")
    old, new = results["copy per job"], results["kept"]
    speed = statistics.median(old["seconds"][1:]) / statistics.median(new["seconds"][1:])
    growth = (old["rss_mb"][-1] - old["rss_mb"][0], new["rss_mb"][-1] - new["rss_mb"][0])
    print(f"kept vs copy per job: {speed:.2f}x faster per job; RSS growth over jobs 2-{args.jobs}: "
          f"{growth[0]:+.0f} MB vs {growth[1]:+.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
