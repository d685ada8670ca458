"""End to end: vLLM started by `babelrag llm serve`, the handbook ingested, cross-lingual
questions answered in the question's language with the right file as source [1]."""

from __future__ import annotations

import json

import pytest
import yaml

from rag import Pipeline, load_settings
from rag.language import dominant_language
from rag.languages import not_found_message
from tests.conftest import EXAMPLES, ROOT
from tests.e2e.conftest import CONFIG
from tests.integration.test_cli import run

pytestmark = [pytest.mark.model, pytest.mark.e2e]

QUESTIONS = {q["lang"]: q for q in yaml.safe_load((EXAMPLES / "questions.yaml").read_text(encoding="utf-8"))}
XQUAD = ROOT.parent / "shared" / "data" / "xquad"


@pytest.fixture(scope="module")
def pipeline(served, monkeypatch_module):
    for name, value in served.items():
        monkeypatch_module.setenv(name, value)
    with Pipeline(load_settings(CONFIG)) as rag:
        yield rag


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
    assert answer.found and answer.language_ok and answer.target_language == lang
    assert answer.usage.prompt_tokens > 100 and answer.usage.completion_tokens > 5 and answer.usage.calls >= 1
    assert 0 < answer.timings["first_token"] <= answer.timings["total"]
    assert {"language", "retrieve", "rerank", "fit", "generate"} <= set(answer.timings)
    assert answer.sentences and answer.text[answer.sentences[0].start : answer.sentences[0].end]
    print(f"\n[{lang}] {q['question']}\n-> {answer.text}\n   [1] {top.chunk.file_name} cited={top.cited}")


def test_cli_ask_streams_answer_and_sources(served, pipeline):
    pipeline.close()  # the embedded store is one process's at a time: this one lets go for the CLI's
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


def test_follow_up_is_rewritten_with_the_conversation(pipeline):
    history = [
        {"role": "user", "content": "Wann wurde Nordlicht Robotics gegründet?"},
        {"role": "assistant", "content": "Nordlicht Robotics wurde 2009 in Kiel gegründet [1]."},
    ]
    answer = pipeline.chat(history, "Und wie viele Mitarbeitende hat die Firma heute?", collection="handbook")
    print(f"\nstandalone: {answer.standalone_question}\n-> {answer.text}")
    standalone = answer.standalone_question
    # the company's name comes from the conversation: either the LLM's rewrite or, when that is not
    # trusted, the previous question carried along
    assert standalone and "Nordlicht" in standalone
    assert dominant_language(pipeline.language, standalone) == "de"
    assert answer.question == "Und wie viele Mitarbeitende hat die Firma heute?"
    assert answer.language == "de" and answer.usage.calls >= 2 and "rewrite" in answer.timings
    assert any(c.chunk.file_name == "en_company_overview.md" for c in answer.citations)


def test_not_found_in_the_users_language_without_asking_the_llm(served):
    with Pipeline(load_settings(CONFIG, **_env_overrides(served), generation={"min_retrieval_score": 5.0})) as rag:
        answer = rag.ask("Wie hoch ist der Mount Everest?", collection="handbook")
    assert not answer.found and answer.text == not_found_message("de") and answer.language == "de"
    assert answer.usage.calls == 0 and not answer.cited


def test_server_counts_tokens_like_the_local_tokenizer(pipeline):
    local, kind = pipeline.llm.token_counter("local")
    server, server_kind = pipeline.llm.token_counter("server")
    assert (kind, server_kind) == ("local", "server")
    for text in ("Wie viele Urlaubstage?", "有給休暇は年間26日です。", "วันลากี่วัน", "كم عدد أيام الإجازة؟"):
        assert local(text) == server(text)


def test_llm_status_reports_the_served_model_and_context(served):
    result = run("llm", "status", "--config", CONFIG, env=served)
    assert result.returncode == 0, result.stderr
    assert "health: ok" in result.stdout and "max_model_len: 4096" in result.stdout


def test_eval_answers_on_a_slice(served, tmp_path):
    corpus = [json.loads(line) for line in (XQUAD / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    queries = [json.loads(line) for line in (XQUAD / "queries_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    langs, paras = ("de", "zh", "ar"), range(3)
    (tmp_path / "corpus.jsonl").write_text(
        "\n".join(json.dumps(d, ensure_ascii=False) for d in corpus if d["lang"] in langs and d["para"] in paras),
        encoding="utf-8",
    )
    picked = [q for q in queries if q["lang"] in langs and q["para"] in paras]
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps(q, ensure_ascii=False) for q in picked), "utf-8")
    result = run(
        "eval", "answers", "--corpus", str(tmp_path / "corpus.jsonl"), "--queries", str(tmp_path / "queries.jsonl"),
        "--sample", "1", "--languages", "de,zh", "--out", str(tmp_path / "run.jsonl"), "--json", "--config", CONFIG,
        env={**served, "BABELRAG_STORE_PATH": str(tmp_path / "store")}, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["questions"] == 1 and sorted(report["by_language"]) == ["de", "zh"]
    overall = report["overall"]
    assert overall["n"] == 2 and overall["errors"] == 0
    assert overall["in_language"] == 1.0  # the guard's promise, even from the 0.5B stand-in
    assert overall["seconds"] > 0 and overall["prompt_tokens"] > 100 and overall["llm_calls"] >= 1
    lines = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["lang"] for line in lines] == ["de", "zh"] and all(line["text"] for line in lines)
    print("\n" + "\n".join(f"[{line['lang']}] {line['question']} -> {line['text']}" for line in lines))


def _env_overrides(env: dict[str, str]) -> dict:
    return {"store": {"path": env["BABELRAG_STORE_PATH"]}, "llm": {"base_url": env["BABELRAG_LLM_BASE_URL"]}}
