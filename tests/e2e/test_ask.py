"""End to end: vLLM started by `babelrag llm serve`, the handbook ingested, cross-lingual
questions answered in the question's language with the right file as source [1]."""

from __future__ import annotations

import pytest
import yaml

from rag import Pipeline, load_settings
from tests.conftest import EXAMPLES, ROOT, free_port, need_env
from tests.integration.test_cli import run

pytestmark = [pytest.mark.model, pytest.mark.e2e]

QUESTIONS = {q["lang"]: q for q in yaml.safe_load((EXAMPLES / "questions.yaml").read_text(encoding="utf-8"))}
CONFIG = str(ROOT / "configs" / "cpu-small.yaml")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    need_env("BABELRAG_EMBEDDING_MODEL", "BABELRAG_LLM_MODEL", "BABELRAG_VLLM_PYTHON")
    port = free_port()
    env = {
        "BABELRAG_VLLM_RUN_DIR": str(tmp_path_factory.mktemp("vllm-run")),
        "BABELRAG_STORE_PATH": str(tmp_path_factory.mktemp("chroma")),
        "BABELRAG_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1",
    }
    started = run("llm", "serve", "--detach", "--port", str(port), "--config", CONFIG, env=env, timeout=960)
    assert started.returncode == 0, started.stderr
    assert f"BABELRAG_LLM_BASE_URL=http://127.0.0.1:{port}/v1" in started.stdout
    try:
        ingested = run("ingest", str(EXAMPLES / "handbook"), "-c", "handbook", "--config", CONFIG, env=env)
        assert ingested.returncode == 0, ingested.stderr
        yield env
    finally:
        stopped = run("llm", "stop", "--port", str(port), "--config", CONFIG, env=env)
        assert f"stopped vLLM on port {port}" in stopped.stdout


@pytest.fixture(scope="module")
def pipeline(served, monkeypatch_module):
    for name, value in served.items():
        monkeypatch_module.setenv(name, value)
    return Pipeline(load_settings(CONFIG))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


# Question language -> the file (in another language) that alone holds the answer. Pairs the
# default first stage ranks first (ranks de 2, ja 1, ar 2, hi 12, zh 4, ru 1, th 1, en 1; see
# tests/integration for all eight); ru is left out: the 0.5B stand-in drifts out of Russian.
@pytest.mark.parametrize("lang", ["ja", "th", "en"])
def test_cross_lingual_answer(pipeline, lang):
    q = QUESTIONS[lang]
    stream = pipeline.stream(q["question"], collection="handbook")
    assert stream.hits[0].chunk.file_name == q["expected_file"]  # known before the first token
    pieces = list(stream)
    answer = stream.answer()
    assert len(pieces) > 3  # streamed, not one blob
    assert answer.text == "".join(pieces).strip() and len(answer.text) > 20
    assert answer.question_language == lang
    assert answer.language == lang, answer.text
    top = answer.citations[0]
    assert top.number == 1 and top.chunk.file_name == q["expected_file"]
    assert q["expected_file"][:2] != lang  # the source is in another language
    print(f"\n[{lang}] {q['question']}\n-> {answer.text}\n   [1] {top.chunk.file_name} cited={top.cited}")


def test_cli_ask_streams_answer_and_sources(served):
    q = QUESTIONS["de"]
    result = run("ask", q["question"], "-c", "handbook", "--config", CONFIG, env=served, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    answer_part, sources = out.split("Sources", 1)
    assert len(answer_part.strip()) > 20
    assert "question language: de · answer language: de" in out
    lines = sources.strip().splitlines()
    assert lines[0].lstrip("* ").startswith("[1] ")
    # the answer is in the Japanese file, among the top sources (de→ja ranks it 2nd of the chunks)
    assert any("ja_security_policy.md" in line and "lang=ja" in line for line in lines[:3]), sources
