"""The CLI's expected failures: one line on stderr that says what to do, exit 1, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT, free_port

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
