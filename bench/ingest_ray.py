"""Ingestion throughput of the local engine against the Ray engine, on the same files, in one run.

    python bench/ingest_ray.py [--paragraphs 20] [--num-cpus 2] [--embed-actors 1] [--embed-cpus 1]
                               [--batch-files 16] [--ray-address ADDR] [--json OUT]

Writes the first N xquad paragraphs of every language to one .txt file each, starts a `chroma run`
server on a temporary folder, loads the models in this process, then ingests the files:
1. with the local engine (``Pipeline.ingest(engine="local")``) into one collection;
2. with the Ray engine into a second: Ray's start (``ray.init``: a local cluster of --num-cpus
   logical CPUs, or --ray-address) is timed apart; the job's time includes starting the workers
   and loading the tokenizer and the model in them, as every Ray job does;
3. with the Ray engine again into a third collection on the same cluster (parse workers reused,
   embedding actors and their models started again);
4. a re-run of 2, with nothing changed (no Ray work at all).
Checks that all three collections hold the same chunk ids, and prints chunks/s of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from common import CPU_CONFIG, XQUAD, read_jsonl

from rag import Pipeline, load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=XQUAD / "corpus.jsonl")
    parser.add_argument("--config", type=Path, default=CPU_CONFIG)
    parser.add_argument("--paragraphs", type=int, default=20, help="the first N paragraphs of every language")
    parser.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--object-store-mb", type=int, default=1000, help="object store of the local Ray cluster")
    parser.add_argument("--ray-address", default=None, help="a running cluster instead of a local one")
    parser.add_argument("--embed-actors", type=int, default=None, help="ingestion.ray_embed_actors")
    parser.add_argument("--embed-cpus", type=float, default=1, help="ingestion.ray_embed_cpus")
    parser.add_argument("--batch-files", type=int, default=16, help="ingestion.ray_batch_files")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()

    import ray

    rows = [r for r in read_jsonl(args.corpus) if r["para"] < args.paragraphs]
    work = Path(tempfile.mkdtemp(prefix="babelrag-bench-ray-"))
    corpus = work / "corpus"
    for row in rows:
        folder = corpus / row["lang"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{row['doc_id']}.txt").write_text(row["text"], encoding="utf-8")

    with chroma_server(work / "chroma") as url:
        settings = load_settings(
            args.config,
            store={"url": url},
            ingestion={
                "ray_address": args.ray_address,
                "ray_embed_actors": args.embed_actors,
                "ray_embed_cpus": args.embed_cpus,
                "ray_batch_files": args.batch_files,
            },
        )
        rag = Pipeline(settings)
        rag.embedder.embed_documents([rows[0]["text"]] * 8)  # load the model and warm up the kernels
        rag.language.detect(rows[0]["text"])
        print(
            f"{len(rows)} files, {len({r['lang'] for r in rows})} languages; {settings.embedding.model} "
            f"({rag.embedder.dtype}, batch {settings.embedding.batch_size}); {os.cpu_count()} CPUs: {cpu_model()}"
        )

        local = timed(lambda: rag.ingest([corpus], "bench-local", engine="local"))
        start = time.perf_counter()
        if args.ray_address:
            ray.init(address=args.ray_address)
        else:
            ray.init(num_cpus=args.num_cpus, object_store_memory=args.object_store_mb * 2**20, include_dashboard=False)
        ray_start_s = time.perf_counter() - start
        print(f"Ray cluster: {ray.cluster_resources()}")
        cold = timed(lambda: rag.ingest([corpus], "bench-ray", engine="ray"))
        again = timed(lambda: rag.ingest([corpus], "bench-ray-2", engine="ray"))
        rerun = timed(lambda: rag.ingest([corpus], "bench-ray", engine="ray"))
        ray.shutdown()

        ids = {name: set(rag.store.client.get_collection(name).get(include=[])["ids"]) for name in COLLECTIONS}
        assert ids["bench-local"] == ids["bench-ray"] == ids["bench-ray-2"], "the engines wrote other chunks"
        assert rerun["report"].chunks_written == 0 and len(rerun["report"].unchanged) == len(rows)

    chunks = len(ids["bench-local"])
    numbers = {
        "files": len(rows),
        "chunks": chunks,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "ray_cluster_cpus": args.num_cpus if not args.ray_address else None,
        "ray_embed_actors": args.embed_actors,
        "ray_embed_cpus": args.embed_cpus,
        "ray_batch_files": args.batch_files,
        "local_s": local["s"],
        "local_chunks_per_s": round(chunks / local["s"], 2),
        "ray_start_s": round(ray_start_s, 1),
        "ray_s": cold["s"],
        "ray_chunks_per_s": round(chunks / cold["s"], 2),
        "ray_again_s": again["s"],
        "ray_again_chunks_per_s": round(chunks / again["s"], 2),
        "ray_rerun_unchanged_s": rerun["s"],
    }
    print(f"local engine   {numbers['local_chunks_per_s']:7.2f} chunks/s  ({chunks} chunks in {local['s']:.1f} s)")
    print(f"Ray start      {ray_start_s:7.1f} s (ray.init)")
    print(
        f"Ray engine     {numbers['ray_chunks_per_s']:7.2f} chunks/s  ({cold['s']:.1f} s, workers started in the job)"
    )
    print(f"Ray, again     {numbers['ray_again_chunks_per_s']:7.2f} chunks/s  ({again['s']:.1f} s, same cluster)")
    print(f"Ray re-run     {rerun['s']:7.2f} s for {len(rows)} unchanged files")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2))


COLLECTIONS = ("bench-local", "bench-ray", "bench-ray-2")


def timed(job) -> dict:
    start = time.perf_counter()
    report = job()
    seconds = time.perf_counter() - start
    assert report.ok, report.failed[:3]
    return {"report": report, "s": round(seconds, 2)}


@contextmanager
def chroma_server(path: Path) -> Iterator[str]:
    """A `chroma run` server on ``path``, on a free port, for the duration of the block."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chroma = Path(sys.executable).parent / "chroma"
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"chroma run did not start on {url}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


if __name__ == "__main__":
    main()
