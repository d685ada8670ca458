"""Operations end to end. `babelrag doctor` on the setup the e2e tests share: healthy, exit 0. And
`babelrag --log-format json --log-level info serve`, run as a user runs it: a real ingestion job
(three languages, the real embedding model, embedded Chroma) and a real answer from vLLM move
/metrics; every line it logged is JSON, and the request id is in the response header and in the
line of every stage of that question."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.conftest import ROOT, free_port, wait_until_serving
from tests.e2e.conftest import CONFIG
from tests.helpers import sample, scrape
from tests.integration.test_cli import BABELRAG, run

pytestmark = [pytest.mark.model, pytest.mark.e2e]

TOKEN, READ = "ops-write-t0ken", "ops-read-t0ken"
DOCS = {
    "kantine.md": "# Kantine\n\nDie Kantine im dritten Stock öffnet werktags um 11:30 Uhr und schließt um 14:00 Uhr.\n",
    "chushajo.md": "# 駐車場\n\n社員用の駐車場は地下二階にあり、月額料金は八千円です。\n",
    "velos.md": "# Vélos\n\nLe local à vélos se trouve près de l'entrée nord et ferme à 22 heures.\n",
}
ANSWER_STAGES = {"language", "embed", "retrieve", "rerank", "fit", "first_token", "generate"}


def test_doctor_finds_the_shared_setup_healthy(served):
    result = run("doctor", "--json", "--config", CONFIG, env={**served, "BABELRAG_STORE_COLLECTION": "handbook"})
    findings = {f["check"]: f for f in map(json.loads, result.stdout.splitlines())}
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [f for f in findings.values() if f["status"] == "fail"]
    for check in ("config", "packages", "embedding", "prompts", "chunking", "language", "store", "collection", "llm"):
        assert findings[check]["status"] == "ok", findings[check]
    assert "'handbook'" in findings["collection"]["detail"] and "context 4096 tokens" in findings["llm"]["detail"]


def test_metrics_and_json_logs_of_a_served_ingest_and_answer(served, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    port = free_port()
    env = {
        **os.environ, "BABELRAG_STORE_PATH": str(tmp_path / "chroma"), "BABELRAG_STORE_INDEX_DIR": str(tmp_path / "idx"),
        "BABELRAG_INGESTION_REPORT_DIR": str(tmp_path / "reports"), "BABELRAG_SERVER_UPLOAD_DIR": str(tmp_path / "up"),
        "BABELRAG_LLM_BASE_URL": served["BABELRAG_LLM_BASE_URL"], "BABELRAG_SERVER_TOKEN": TOKEN,
        "BABELRAG_SERVER_READ_TOKEN": READ,
        # what this tests is the numbers about an answer, not its length or its token counts: a short answer
        # (20 s for 160 tokens on the shared CPU) and no LLM tokenizer to load (~5 s)
        "BABELRAG_LLM_MAX_TOKENS": "48", "BABELRAG_GENERATION_TOKENIZER": "estimate",
    }  # fmt: skip
    command = [BABELRAG, "--log-format", "json", "--log-level", "info", "serve", "--port", str(port), "--config", CONFIG]
    log_file = tmp_path / "serve.log"
    with log_file.open("w") as log:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/healthz", server, ready=lambda r: r.status_code == 200, what="babelrag serve",
                           timeout_s=240)  # fmt: skip
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600) as client:
            submitted = client.post("/v1/jobs", json={"paths": [str(docs)], "collection": "betrieb"})
            assert submitted.status_code == 202, submitted.text
            job_request = submitted.headers["x-request-id"]
            job = wait_for_job(client, submitted.json()["id"])
            assert job["status"] == "done", job
            before = scrape(client.get("/metrics", headers={"Authorization": f"Bearer {READ}"}).text)

            asked = client.post("/v1/ask", json={"question": "Wann öffnet die Kantine?", "collection": "betrieb"},
                                headers={"X-Request-ID": "frage-kantine-0001"})  # fmt: skip
            assert asked.status_code == 200, asked.text
            assert asked.headers["x-request-id"] == "frage-kantine-0001"
            answer = asked.json()
            searched = client.post("/v1/search", json={"query": "駐車場の料金", "collection": "betrieb"})
            assert searched.status_code == 200 and searched.json()["hits"][0]["file_name"] == "chushajo.md"
            search_request = searched.headers["x-request-id"]  # none sent: the server made one
            after = scrape(client.get("/metrics", headers={"Authorization": f"Bearer {READ}"}).text)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    print(f"\n[de] Wann öffnet die Kantine? -> {answer['text']}")

    # /metrics: the ingestion job, then the answer and the search
    assert sample(before, "babelrag_ingest_jobs_total", outcome="ok") == 1
    assert sample(before, "babelrag_ingest_files_total", outcome="added") == len(DOCS)
    assert sample(before, "babelrag_ingest_chunks_written_total") >= len(DOCS)
    assert sample(before, "babelrag_ingest_chunks_per_second") > 0
    assert sample(before, "babelrag_up", component="store") == 1 and sample(before, "babelrag_up", component="llm") == 1
    for stage in ANSWER_STAGES:
        count = "babelrag_stage_duration_seconds_count"
        assert sample(after, count, stage=stage) > sample(before, count, stage=stage), stage
    assert sample(after, "babelrag_stage_duration_seconds_count", stage="retrieve") == 2  # the answer's, the search's
    outcome = "answered" if answer["found"] else "not_found"
    assert sample(after, "babelrag_answers_total", outcome=outcome, language="de") == 1
    assert sample(after, "babelrag_llm_tokens_total", kind="prompt") == answer["usage"]["prompt_tokens"] > 0
    assert sample(after, "babelrag_llm_tokens_total", kind="completion") == answer["usage"]["completion_tokens"] > 0
    assert sample(after, "babelrag_http_requests_total", method="POST", route="/v1/ask", status="200") == 1
    assert sample(after, "babelrag_http_requests_total", method="POST", route="/v1/jobs", status="202") == 1

    # the log: JSON only, and each line of the question's stages under its request id
    text = log_file.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # fails on any line that is not JSON
    asked_lines = [line for line in lines if line.get("request_id") == "frage-kantine-0001"]
    assert {line["stage"] for line in asked_lines if "stage" in line} >= ANSWER_STAGES
    assert {"route": "/v1/ask", "status": 200} in [{k: line.get(k) for k in ("route", "status")} for line in asked_lines]
    assert len(search_request) == 32 and {"embed", "retrieve", "rerank"} <= {
        line.get("stage") for line in lines if line.get("request_id") == search_request
    }
    ingested = [line for line in lines if line["message"].startswith("ingested 3 added")]
    assert ingested and ingested[0]["request_id"] == job_request and ingested[0]["chunks_written"] >= len(DOCS)


def wait_for_job(client: httpx.Client, job_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.5)
    pytest.fail(f"ingestion job {job_id} did not finish within {timeout_s:.0f} s")
