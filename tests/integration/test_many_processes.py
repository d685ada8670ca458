"""One store, many processes, as a company runs it: `babelrag serve` answering 20 clients while
a scheduled `babelrag ingest` writes the same collection from another process, in both store
modes; the ingestion lease between two jobs; `babelrag serve --chroma`. Real processes, real
Chroma (embedded and `chroma run`), the real embedding model."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import chromadb
import httpx
import pytest

from rag.config import StoreConfig
from rag.store import ChromaStore
from tests.conftest import EXAMPLES, ROOT, free_port, wait_until_serving
from tests.integration.test_cli import BABELRAG

pytestmark = [pytest.mark.model, pytest.mark.integration]

CONFIG = ["--config", str(ROOT / "configs" / "cpu-small.yaml")]
TOKEN = "many-processes"
# Questions the clients keep asking, in eight languages.
QUESTIONS = [
    "Wie oft muss das Zertifikat erneuert werden?", "How many days of annual leave are there?",
    "Сколько стоит обед в командировке?", "كم يوما من الإجازة السنوية؟", "लैपटॉप कितने महीनों बाद बदले जाते हैं?",
    "ทำงานจากที่บ้านได้กี่วัน", "公司有多少员工？", "パスワードは何文字以上ですか？",
]  # fmt: skip
# New documents a job writes while the clients ask: one fact each, with a word found nowhere else.
NEW = {
    "de": "Das Projekt Quellwasser{n} startet im März in der Halle {n}.",
    "en": "Project Riverstone{n} begins in March in hall {n}.",
    "ru": "Проект Родник{n} начнётся в марте в зале {n}.",
    "ar": "يبدأ مشروع الينبوع{n} في مارس في القاعة {n}.",
    "hi": "परियोजना झरना{n} मार्च में हॉल {n} में शुरू होगी।",
    "th": "โครงการน้ำพุ{n} จะเริ่มในเดือนมีนาคมที่ห้อง {n}",
    "zh": "泉水{n}项目将于三月在{n}号厅启动。",
    "ja": "泉{n}プロジェクトは三月に{n}番ホールで始まります。",
}


def new_documents(folder: Path, per_language: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for lang, text in NEW.items():
        for n in range(per_language):
            (folder / f"{lang}-{n}.txt").write_text(text.format(n=n), encoding="utf-8")
    return folder


def babelrag(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([BABELRAG, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


class Serve:
    """`babelrag serve` as a process, with the token."""

    def __init__(self, env: dict[str, str], *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [BABELRAG, "serve", "--port", str(self.port), *CONFIG, *extra], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        wait_until_serving(f"{self.url}/healthz", self.proc, ready=lambda r: r.status_code == 200, what="serve")

    def retrieve(self, query: str, collection: str, top_k: int = 5) -> httpx.Response:
        return self.client.post("/v1/search", json={"query": query, "collection": collection, "top_k": top_k})

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


class Clients:
    """20 clients asking questions in a loop until stopped; every answer's status is counted."""

    def __init__(self, serve: Serve, collection: str, n: int = 20) -> None:
        self.statuses: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._ask, args=(serve, collection, i), daemon=True) for i in range(n)
        ]

    def _ask(self, serve: Serve, collection: str, i: int) -> None:
        with httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as client:
            k = i
            while not self._stop.is_set():
                try:
                    body = {"query": QUESTIONS[k % len(QUESTIONS)], "collection": collection}
                    r = client.post("/v1/search", json=body)
                    status = str(r.status_code) if r.status_code != 200 or r.json()["hits"] else "200 but empty"
                except httpx.HTTPError as e:
                    status = type(e).__name__
                with self._lock:
                    self.statuses[status] += 1
                k += 1

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "BABELRAG_STORE_PATH": str(tmp_path / "chroma"), "BABELRAG_STORE_INDEX_DIR": str(tmp_path / "index"),
        "BABELRAG_SERVER_TOKEN": TOKEN, "BABELRAG_INGESTION_REPORT_DIR": str(tmp_path / "reports"), **extra,
    }  # fmt: skip


def write_while_20_clients_ask(serve: Serve, env: dict[str, str], folder: Path, collection: str) -> Counter[str]:
    with Clients(serve, collection) as clients:
        time.sleep(1)  # the clients are asking before the job starts
        job = babelrag("ingest", str(folder), "-c", collection, *CONFIG, env=env)
        assert job.returncode == 0, job.stdout + job.stderr
        assert f"{len(NEW) * 5} added" in job.stdout, job.stdout
        time.sleep(1)
    return clients.statuses


def test_embedded_store_ingest_hands_its_job_to_serve_while_20_clients_ask(tmp_path):
    env = base_env(tmp_path)
    serve = Serve(env)
    try:
        # the store is the server's: a second process's ingest goes to it, with the token
        first = babelrag("ingest", str(EXAMPLES / "handbook"), "-c", "handbook", *CONFIG, env=env)
        assert first.returncode == 0 and "8 added" in first.stdout, first.stdout + first.stderr
        statuses = write_while_20_clients_ask(serve, env, new_documents(tmp_path / "new", 5), "handbook")
        assert set(statuses) == {"200"} and statuses["200"] >= 40, statuses
        (hit,) = serve.retrieve("Wann startet das Projekt Quellwasser3?", "handbook", top_k=1).json()["hits"]
        assert hit["file_name"] == "de-3.txt"

        # without the token the server does not take the job; a read from another process is refused
        no_token = {k: v for k, v in env.items() if k != "BABELRAG_SERVER_TOKEN"}
        refused = babelrag("ingest", str(tmp_path / "new"), "-c", "handbook", *CONFIG, env=no_token)
        assert refused.returncode == 1 and "wants its token" in refused.stderr, refused.stderr
        read = babelrag("search", "Zertifikat", "-c", "handbook", *CONFIG, env=env)
        assert read.returncode == 1 and f"serving http://127.0.0.1:{serve.port}" in read.stderr, read.stderr
        assert "babelrag serve --chroma" in read.stderr
    finally:
        err = serve.stop()
    assert "Traceback" not in err, err


def test_chroma_server_many_writers_and_readers_while_20_clients_ask(chroma_server, tmp_path):
    env = base_env(tmp_path, BABELRAG_STORE_URL=chroma_server)
    assert babelrag("ingest", str(EXAMPLES / "handbook"), "-c", "kb-server", *CONFIG, env=env).returncode == 0
    serve = Serve(env)
    try:
        serve.retrieve(QUESTIONS[0], "kb-server")  # the keyword index is built once before the clock runs
        statuses = write_while_20_clients_ask(serve, env, new_documents(tmp_path / "new", 5), "kb-server")
        assert set(statuses) == {"200"} and statuses["200"] >= 40, statuses

        # one more file from another process: the server finds it by its keyword within 2 s
        one = new_documents(tmp_path / "one", 1)
        (one / "de-0.txt").write_text("Die Prüfnummer Zaunkönig-4711 steht auf dem Typenschild.", encoding="utf-8")
        assert babelrag("ingest", str(one), "-c", "kb-server", *CONFIG, env=env).returncode == 0
        written = time.monotonic()
        while True:
            hits = serve.retrieve("Wo steht die Prüfnummer Zaunkönig-4711?", "kb-server", top_k=1).json()["hits"]
            if hits and "Zaunkönig-4711" in hits[0]["text"]:
                break
            assert time.monotonic() - written < 2.0, "a new document took more than 2 s to be found by another process"
            time.sleep(0.05)
    finally:
        err = serve.stop()
    assert "Traceback" not in err, err


def test_a_second_job_on_a_collection_is_refused_and_a_killed_jobs_lease_is_taken_over(chroma_server, tmp_path):
    env = base_env(tmp_path, BABELRAG_STORE_URL=chroma_server, BABELRAG_INGESTION_UPSERT_BATCH="4")
    folder = new_documents(tmp_path / "many", 25)  # 200 files: the first job runs a while
    first = subprocess.Popen(
        [BABELRAG, "ingest", str(folder), "-c", "kb-lease", *CONFIG], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in first.stderr:  # its progress lines: it holds the lease and writes
            if line.startswith("[5/"):
                break
        # frozen, not finished: on a fast machine the 200 files are written before the second
        # job has started; a stopped process keeps its lease (alive, within lease_ttl_s)
        first.send_signal(signal.SIGSTOP)
        second = babelrag("ingest", str(folder), "-c", "kb-lease", *CONFIG, env=env)
        assert second.returncode == 1, second.stdout
        assert "'kb-lease' is being written by another ingestion job: babelrag ingest" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "--wait SECONDS" in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    # its lease is still in the store, but its process is gone: the next job takes over at once
    client = chromadb.HttpClient(host="127.0.0.1", port=int(chroma_server.rsplit(":", 1)[1]))
    assert "kb-lease.lease" in [c.name for c in client.list_collections()]
    started = time.monotonic()
    third = babelrag("ingest", str(folder), "-c", "kb-lease", *CONFIG, env=env)
    assert third.returncode == 0, third.stderr
    assert time.monotonic() - started < 120
    store = ChromaStore(StoreConfig(url=chroma_server))
    entries = store.manifest("kb-lease")
    assert len(entries) == 200 and all(e.done for e in entries.values())
    assert store.state("kb-lease").documents == 200 and store.info("kb-lease").count == 200
    assert "kb-lease.lease" not in [c.name for c in client.list_collections()]


def test_serve_with_chroma_lets_other_processes_use_the_embedded_store(tmp_path):
    env = base_env(tmp_path)
    chroma_port = free_port()
    serve = Serve(env, "--chroma", "--chroma-port", str(chroma_port))
    try:
        # another process opening the embedded store is sent to serve's Chroma server: no hand-off
        job = babelrag("ingest", str(EXAMPLES / "handbook"), "-c", "handbook", *CONFIG, env=env)
        assert job.returncode == 0 and "8 added" in job.stdout, job.stderr
        found = babelrag("search", "Wie oft muss das Zertifikat erneuert werden?", "-c", "handbook", "-k", "3",
                         *CONFIG, env=env)  # fmt: skip
        assert found.returncode == 0 and "ja_security_policy.md" in found.stdout, found.stdout + found.stderr
        hits = serve.retrieve("Wie oft muss das Zertifikat erneuert werden?", "handbook", top_k=3).json()["hits"]
        assert "ja_security_policy.md" in [h["file_name"] for h in hits]
        assert httpx.get(f"http://127.0.0.1:{chroma_port}/api/v2/heartbeat").status_code == 200
    finally:
        err = serve.stop()
    assert "Traceback" not in err, err
    with pytest.raises(httpx.HTTPError):  # the Chroma server went with it
        httpx.get(f"http://127.0.0.1:{chroma_port}/api/v2/heartbeat", timeout=2)
