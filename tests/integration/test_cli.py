"""The CLI's expected failures: one line on stderr that says what to do, exit 1, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT, free_port

pytestmark = pytest.mark.integration  # each test runs the `babelrag` command in a process

BABELRAG = str(Path(sys.executable).parent / "babelrag")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BABELRAG, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})}
    )


def one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("error: ") and expected in lines[-1], result.stderr


def test_empty_question(tmp_path):
    one_line_error(run("ask", "  ", env={"BABELRAG_STORE_PATH": str(tmp_path)}), "the question is empty")


def test_unknown_collection(tmp_path):
    result = run("search", "Hallo", "-c", "missing-kb", env={"BABELRAG_STORE_PATH": str(tmp_path)})
    one_line_error(result, "collection 'missing-kb' does not exist")
    assert "babelrag ingest PATH -c missing-kb" in result.stderr


def test_missing_embedding_model_fails_fast(tmp_path):
    env = {"BABELRAG_STORE_PATH": str(tmp_path), "BABELRAG_EMBEDDING_MODEL": str(tmp_path / "no-model")}
    result = run("ingest", str(EXAMPLES / "handbook"), "-c", "handbook", env=env)
    one_line_error(result, f"embedding model '{tmp_path / 'no-model'}' is not available")
    assert "BABELRAG_EMBEDDING_MODEL" in result.stderr


def test_hub_id_offline_names_the_setting(tmp_path):
    env = {"BABELRAG_STORE_PATH": str(tmp_path), "BABELRAG_EMBEDDING_MODEL": "intfloat/multilingual-e5-small",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    one_line_error(run("ingest", str(EXAMPLES / "handbook"), "-c", "kb1", env=env), "HF_HUB_OFFLINE is set")


def test_missing_llm_model_for_serve(tmp_path):
    env = {"BABELRAG_VLLM_RUN_DIR": str(tmp_path)}
    one_line_error(run("llm", "serve", "--model", str(tmp_path / "no-llm"), env=env), "LLM model")


def test_bad_config_value(tmp_path):
    one_line_error(run("search", "x", env={"BABELRAG_RETRIEVAL_TOP_K": "many"}), "retrieval.top_k")


@pytest.mark.model
def test_llm_server_down(model_settings, tmp_path):
    env = {"BABELRAG_STORE_PATH": str(tmp_path), "BABELRAG_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    assert run("ingest", str(EXAMPLES / "handbook"), "-c", "handbook", env=env).returncode == 0
    result = run("ask", "Wie oft muss das Zertifikat erneuert werden?", "-c", "handbook", env=env)
    one_line_error(result, "cannot reach the LLM server")
    assert "babelrag llm serve" in result.stderr


@pytest.mark.model
def test_ingest_every_format_and_report_bad_files_on_a_chroma_server(model_settings, chroma_server, tmp_path):
    """One folder: good files in five formats and eight languages, and the hostile files of
    issue 3. Against a real `chroma run` (--chroma-url): the good ones land, each bad one is in
    the console table and the JSON report with its reason, and the exit status is 1."""
    from tests.helpers_files import write_docx, write_html, write_pdf, write_zip_bomb

    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "de.txt").write_text("Der Zug nach Hamburg fährt um acht Uhr. Er hat zehn Wagen.", encoding="utf-8")
    (kb / "ru-cp1251.txt").write_bytes("Поезд в Москву отправляется в девять часов утра.".encode("cp1251"))
    (kb / "ja.md").write_text("# 電車\n\n## 時刻\n\n大阪行きの電車は五時に出発します。", encoding="utf-8")
    write_html(kb / "ar.html", "القطار", "<h2>المواعيد</h2><p>يغادر القطار إلى القاهرة في العاشرة صباحا.</p>")
    write_pdf(kb / "en-de.pdf", ["The train to Leeds leaves at four.", "Der Zug nach Bremen fährt um fünf."])
    write_docx(kb / "zh.docx", "火车", [("时刻表", ["去上海的火车六点出发。"])])
    write_docx(kb / "hi-th.docx", None, [("समय", ["दिल्ली की रेलगाड़ी सात बजे चलती है।"]), ("เวลา", ["รถไฟไปเชียงใหม่ออกตอนหกโมง"])])
    # the bad ones
    (kb / "empty.txt").write_bytes(b"")
    (kb / "binary.md").write_bytes(bytes(range(256)) * 8)
    (kb / "corrupt.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage")
    write_zip_bomb(kb / "bomb.docx", unpacked_mb=300)
    with open(kb / "huge.txt", "wb") as f:
        f.truncate(100 * 2**20)  # 100 MB, sparse
    (kb / "loop-a.txt").symlink_to(kb / "loop-b.txt")
    (kb / "loop-b.txt").symlink_to(kb / "loop-a.txt")
    sentence = "Die Größe der Straße und der Brücke ist bekannt. ".encode()
    (kb / "latin1-broken.txt").write_bytes(sentence * 10 + b"\xff\xfe" + sentence * 10)  # 2 bad bytes in 1 KB

    report_file = tmp_path / "report.json"
    result = run("ingest", str(kb), "-c", "formats", "--chroma-url", chroma_server, "--report", str(report_file))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(report_file.read_text(encoding="utf-8"))
    names = lambda items: sorted(Path(i if isinstance(i, str) else i["path"]).name for i in items)  # noqa: E731
    assert names(report["added"]) == sorted(["de.txt", "ru-cp1251.txt", "ja.md", "ar.html", "en-de.pdf", "zh.docx", "hi-th.docx", "latin1-broken.txt"])
    assert names(report["failed"]) == sorted(["empty.txt", "binary.md", "corrupt.pdf", "bomb.docx", "huge.txt", "loop-a.txt", "loop-b.txt"])
    reasons = {Path(f["path"]).name: f["reason"] for f in report["failed"]}
    assert "empty" in reasons["empty.txt"]
    assert "binary" in reasons["binary.md"]
    assert "PDF" in reasons["corrupt.pdf"]
    assert "zip bomb" in reasons["bomb.docx"]
    assert "max_file_mb" in reasons["huge.txt"]
    assert "symlink" in reasons["loop-a.txt"]
    assert any("invalid UTF-8" in w["reason"] for w in report["warnings"])
    for name in reasons:  # the console table names each failed file
        assert name in result.stderr

    listed = run("documents", "-c", "formats", "--chroma-url", chroma_server)
    assert listed.returncode == 0
    for lang in ("de", "ru", "ja", "ar", "zh"):
        assert f" {lang} " in listed.stdout, listed.stdout

    found = run("search", "متى يغادر القطار إلى القاهرة؟", "-c", "formats", "--chroma-url", chroma_server, "-k", "1")
    assert found.returncode == 0 and "ar.html" in found.stdout, found.stdout
    again = run("ingest", str(kb), "-c", "formats", "--chroma-url", chroma_server, "--report", str(report_file))
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert again.returncode == 1 and len(report["unchanged"]) == 8 and report["chunks_written"] == 0
