"""`babelrag doctor` on a broken setup: a wrong embedding model path, no LLM server, and the embedded
store locked by another process. Each is a problem with its fix, the other checks still run, and
the exit status is 1. (The healthy setup: tests/e2e/test_operations.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port
from tests.integration.test_cli import run

pytestmark = pytest.mark.integration

# Another process that opens the embedded store and keeps it, as `babelrag serve` would.
HOLD_STORE = """
import sys, time
from pathlib import Path
from rag.config import StoreConfig
from rag.store import ChromaStore
ChromaStore(StoreConfig(path=Path(sys.argv[1]))).warm_up()
print("held", flush=True)
time.sleep(300)
"""


def test_doctor_names_each_problem_with_its_fix(tmp_path):
    store = tmp_path / "store"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_STORE, str(store)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        env = {
            "BABELRAG_STORE_PATH": str(store),
            "BABELRAG_EMBEDDING_MODEL": str(tmp_path / "kein-modell"),
            "BABELRAG_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
            "BABELRAG_RETRIEVAL_TOPK": "3",  # a typo: ignored by the settings, pointed out by doctor
        }
        result = run("doctor", "--json", env=env, timeout=120)
    finally:
        holder.terminate()
        holder.wait(timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    findings = [json.loads(line) for line in result.stdout.splitlines()]
    failed = {f["check"]: f for f in findings if f["status"] == "fail"}
    assert set(failed) == {"embedding", "store", "llm"}, findings
    assert f"'{tmp_path / 'kein-modell'}' is not available (no such folder)" in failed["embedding"]["detail"]
    assert "BABELRAG_EMBEDDING_MODEL" in failed["embedding"]["fix"]
    assert f"{store} is locked: pid {holder.pid}" in failed["store"]["detail"]
    assert "babelrag serve --chroma" in failed["store"]["fix"] and f"stop pid {holder.pid}" in failed["store"]["fix"]
    assert "cannot reach the LLM server" in failed["llm"]["detail"] and "babelrag llm serve" in failed["llm"]["fix"]
    typo = [f for f in findings if f["status"] == "warn" and "BABELRAG_RETRIEVAL_TOPK" in f["detail"]]
    assert typo and "did you mean BABELRAG_RETRIEVAL_TOP_K?" in typo[0]["fix"]
    assert all(f["fix"] for f in findings if f["status"] != "ok")
    checked = {f["check"] for f in findings}
    assert {"config", "packages", "language", "reranker"} <= checked  # one problem does not hide the next
