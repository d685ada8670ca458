"""A real `chroma run` server killed (SIGKILL) and started again while BabelRAG uses it: during an
ingestion job (which must wait for it and finish with nothing lost or doubled) and during queries
(REST answers 503 at once, the CLI one line; the app answers again as soon as the server is back,
without a restart of its own). Real embedding model; the LLM, where one is asked, is the scripted
OpenAI-compatible server of tests/helpers.py."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from rag import Pipeline, load_settings
from tests.conftest import ROOT, need_env
from tests.helpers import FakeLLM
from tests.helpers_web import AppServer
from tests.integration.conftest import ChromaProcess
from tests.integration.test_cli import BABELRAG
from tests.integration.test_ingest_jobs import TEXTS, assert_consistent, snapshot, write_kb
from ui.server import create_app

pytestmark = [pytest.mark.model, pytest.mark.integration]

CONFIG = ROOT / "configs" / "cpu-small.yaml"
QUESTIONS = {  # language: (question, the file that answers it)
    "de": ("Wann fährt der Zug nach Hamburg?", "de.txt"),
    "ja": ("大阪行きの電車は何時に出発しますか？", "ja.txt"),
    "ar": ("متى يغادر القطار إلى القاهرة؟", "ar.txt"),
    "ru": ("Когда отправляется поезд в Москву?", "ru.txt"),
    "hi": ("दिल्ली की रेलगाड़ी कब चलती है?", "hi.md"),
}
GERMAN_ANSWER = "Der Zug nach Hamburg fährt um acht Uhr [1]."


def pipeline_on(chroma: ChromaProcess, tmp_path: Path, embedder, language, **llm) -> Pipeline:
    settings = load_settings(
        CONFIG,
        store={"url": chroma.url, "index_dir": str(tmp_path / "index")},
        ingestion={"upsert_batch": 8},  # many writes, so that the server dies between two of them and in one
        llm={"model": "m", "max_retries": 0, **llm},
        generation={"tokenizer": "estimate"},
    )
    return Pipeline(settings, embedder=embedder, language=language)


@pytest.mark.slow
def test_a_chroma_server_restarted_twice_during_a_job_loses_and_doubles_nothing(
    tmp_path, embedder, language, figure, caplog
):
    """32 files in 8 languages; the server is killed once between two writes (after file 8) and once
    50 ms after file 20 was done (while the job writes or embeds), each time started again a second
    later. The job waits (ingestion.store_retry_s) and must leave exactly what an uninterrupted job
    leaves in another collection of the same server: chunks and ids, manifest, state record."""
    need_env("BABELRAG_EMBEDDING_MODEL")
    chroma = ChromaProcess(tmp_path / "chroma").start()
    restarts: list[threading.Thread] = []
    try:
        texts = {f"{i:02d}-{name}": f"{text} ({i})" for i in range(4) for name, text in TEXTS.items()}
        kb = write_kb(tmp_path / "kb", texts)
        pipeline = pipeline_on(chroma, tmp_path, embedder, language)
        assert pipeline.ingest([kb], "reference").ok
        reference = snapshot(pipeline.store, "reference")
        assert_consistent(reference)

        def restart(after_s: float) -> None:
            time.sleep(after_s)
            chroma.kill()
            time.sleep(1.0)
            chroma.start()

        def progress(p) -> None:
            if p.files_done == 8:
                chroma.kill()  # between two store calls: the job's next one finds nothing listening
                restarts.append(threading.Thread(target=restart, args=(0,)))
            elif p.files_done == 20:
                restarts.append(threading.Thread(target=restart, args=(0.05,)))  # while the job goes on
            else:
                return
            restarts[-1].start()

        with caplog.at_level(logging.WARNING, logger="ingestion.job"):
            report = pipeline.ingest([kb], "restarted", progress=progress)
        waits = [r for r in caplog.records if "the store does not answer" in r.getMessage()]
        assert len(restarts) == 2 and len(waits) >= 2, "the job did not meet both outages"
        assert report.ok and len(report.added) == 32, report.failed

        got = snapshot(pipeline.store, "restarted")
        lost = set(reference["manifest"]) - set(got["manifest"])
        doubled = len(set(got["chunks"]) - set(reference["chunks"]))
        figure(
            f"reliability: Chroma server killed and restarted during an ingestion job 2 times (between two writes, "
            f"and 50 ms into the job's work), files {len(reference['manifest'])}, lost {len(lost)}, doubled chunks "
            f"{doubled}, job retries {len(waits)}"
        )
        assert got == reference and not lost and doubled == 0
        state = pipeline.store.state("restarted")
        assert state.documents == len(got["manifest"]) == 32
        assert state.sums.counts == Counter(meta.get("language") for _, meta in got["chunks"].values())
    finally:
        for thread in restarts:  # a restart still under way would start the server after the kill below
            thread.join(timeout=60)
        chroma.kill()


def test_queries_during_an_outage_are_a_503_at_once_and_work_again_once_chroma_is_back(
    tmp_path, embedder, language, figure
):
    need_env("BABELRAG_EMBEDDING_MODEL")
    chroma = ChromaProcess(tmp_path / "chroma").start()
    try:
        pipeline = pipeline_on(chroma, tmp_path, embedder, language)
        assert pipeline.ingest([write_kb(tmp_path / "kb")], "outage").ok
        with (
            FakeLLM(GERMAN_ANSWER) as llm,
            AppServer(create_app(pipeline=pipeline_on(chroma, tmp_path, embedder, language, base_url=llm.url))) as app,
            httpx.Client(base_url=app.url, timeout=60) as client,
        ):
            for question, _ in QUESTIONS.values():  # all well; the app has its handles and indexes
                assert client.post("/v1/search", json={"query": question, "collection": "outage"}).status_code == 200

            chroma.kill()
            answered, slowest = Counter(), 0.0
            for _ in range(4):
                for question, _ in QUESTIONS.values():
                    for route, body in (("/v1/search", {"query": question}), ("/v1/ask", {"question": question})):
                        started = time.monotonic()
                        r = client.post(route, json={**body, "collection": "outage"})
                        slowest = max(slowest, time.monotonic() - started)
                        error = r.json()["error"]
                        assert error["type"] == "StoreUnavailableError" and chroma.url in error["message"], error
                        assert "start it again" in error["message"]
                        answered[r.status_code] += 1
            ready = client.get("/readyz")
            assert ready.status_code == 503 and not ready.json()["checks"]["store"]["ok"]
            cli = subprocess.run(
                [BABELRAG, "search", QUESTIONS["ru"][0], "-c", "outage", "--chroma-url", chroma.url, "--config",
                 str(CONFIG)], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
                env={**os.environ, "BABELRAG_STORE_INDEX_DIR": str(tmp_path / "cli-index")},
            )  # fmt: skip
            lines = [line for line in cli.stderr.splitlines() if line.strip()]
            assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
            assert lines[-1].startswith(f"error: cannot open Chroma server {chroma.url}:"), cli.stderr

            chroma.start()
            back = time.monotonic()
            search = {"query": QUESTIONS["de"][0], "collection": "outage"}
            while (r := client.post("/v1/search", json=search)).status_code != 200:
                assert time.monotonic() - back < 30, r.text
                time.sleep(0.05)
            recovered = time.monotonic() - back
            assert Path(r.json()["hits"][0]["source"]).name == QUESTIONS["de"][1]
            asked = client.post("/v1/ask", json={"question": QUESTIONS["de"][0], "collection": "outage"})
            assert asked.status_code == 200 and asked.json()["text"] == GERMAN_ANSWER
            assert client.get("/readyz").status_code == 200
        total = sum(answered.values())
        figure(
            f"reliability: queries during a Chroma outage (REST /v1/search and /v1/ask, 5 languages) {total}, "
            f"answered 503 {answered[503]} (slowest {slowest:.2f} s), CLI one-line error 1 of 1; answering again "
            f"{recovered:.2f} s after the server was back, without an app restart"
        )
        assert answered == {503: total} and total == 40
        assert slowest < 10  # at once: queries do not wait for the store (generous for a shared machine)
    finally:
        chroma.kill()
