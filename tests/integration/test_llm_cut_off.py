"""The LLM server killed (SIGKILL) in the middle of an answer, seen through every front end: REST
/v1/ask's server-sent events, the OpenAI-compatible stream (the ``openai`` client), the web UI's
chat handler and ``babelrag ask``. Each must end with a clean error that names the LLM server, the
text that arrived marked as cut off, and no request left waiting. The LLM is the scripted
OpenAI-compatible server of tests/helpers.py, in a process of its own that is killed mid-stream;
the store is a real `chroma run` server (so the CLI, another process, reads it too) holding a
small knowledge base in eight languages, with the real embedding model."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import openai
import pytest

from rag import Pipeline, load_settings
from rag.cli import CUT_OFF
from tests.conftest import ROOT, need_env
from tests.helpers import FakeLLMProcess
from tests.helpers_web import AppServer
from tests.integration.test_cli import BABELRAG
from tests.integration.test_ingest_jobs import TEXTS, write_kb
from tests.integration.test_rest_v1 import events, serve
from ui import render
from ui.server import create_app
from ui.web import Session, WebUI

pytestmark = [pytest.mark.model, pytest.mark.integration]

COLLECTION = "cut-off"
CONFIG = str(ROOT / "configs" / "cpu-small.yaml")
# A question per front end, and the long answer (in its language, citing [1]) the LLM starts to write.
CASES = {
    "de": ("Wann fährt der Zug nach Hamburg ab?",
           "Der Zug nach Hamburg fährt um acht Uhr ab [1]. "
           + "Er hat zehn Wagen, und der Speisewagen ist in der Mitte des Zuges [1]. " * 6),
    "ja": ("大阪行きの電車は何時に出発しますか？",
           "大阪行きの電車は五時に出発します[1]。" + "車両は七両で、食堂車は後ろにあります[1]。" * 12),
    "ar": ("متى يغادر القطار إلى القاهرة؟",
           "يغادر القطار إلى القاهرة في العاشرة [1]. " + "فيه ثماني عربات، وعربة الطعام في المؤخرة [1]. " * 6),
    "ru": ("Когда отправляется поезд в Москву?",
           "Поезд в Москву отправляется в девять [1]. "
           + "В нём двенадцать вагонов, а буфет находится в голове поезда [1]. " * 6),
}  # fmt: skip
FRONT_ENDS = ("REST SSE", "OpenAI stream", "web UI", "CLI")
NO_HANG_S = 30  # generous: the error comes after one retry of 0.1 s


def slow(text: str) -> dict:
    """The LLM writes ``text`` 4 characters every 50 ms: killed after the first piece arrives, most is unsent."""
    return {"text": text, "delay_s": 0.05}


@pytest.fixture(scope="module")
def kb(chroma_server, embedder, language, tmp_path_factory) -> Pipeline:
    need_env("BABELRAG_EMBEDDING_MODEL")
    settings = load_settings(
        CONFIG,
        store={"url": chroma_server, "index_dir": str(tmp_path_factory.mktemp("index"))},
        # one retry, at once: a stream cut after text was shown is resumed at temperature 0, and the
        # retry finds the server gone
        llm={"max_retries": 1, "retry_backoff_s": 0.1, "model": "m"},
        generation={"tokenizer": "estimate"},
    )
    pipeline = Pipeline(settings, embedder=embedder, language=language)
    assert pipeline.ingest([write_kb(tmp_path_factory.mktemp("kb"), TEXTS)], COLLECTION).ok
    return pipeline


def with_llm(pipeline: Pipeline, url: str) -> Pipeline:
    settings = pipeline.settings.model_copy(deep=True)
    settings.llm.base_url = url
    return Pipeline(settings, embedder=pipeline.embedder, store=pipeline.store, language=pipeline.language)


@pytest.fixture(scope="module")
def outcomes(figure) -> Iterator[dict[str, bool]]:
    """Front end -> its partial answer was marked as cut off; one figure line for the four tests."""
    seen: dict[str, bool] = {}
    yield seen
    marked = sum(seen.values())
    figure(
        f"reliability: LLM server killed mid-stream (SIGKILL) in {', '.join(seen) or 'none'}: {len(seen)} of "
        f"{len(FRONT_ENDS)} clean errors, partial answer marked as cut off in {marked} of {len(FRONT_ENDS)}"
    )


def assert_names_the_llm(message: str, llm: FakeLLMProcess) -> None:
    assert "the answer broke off after" in message and llm.url in message, message
    assert "Traceback" not in message


def test_rest_sse_ends_with_an_error_event_after_the_partial_answer(kb, outcomes):
    question, answer = CASES["de"]
    with FakeLLMProcess(slow(answer)) as llm, serve(with_llm(kb, llm.url)) as api:
        got = []
        body = {"question": question, "collection": COLLECTION, "stream": True}
        with api.stream("POST", "/v1/ask", json=body) as response:
            for kind, data in events(response):
                got.append((kind, data))
                if kind == "delta" and len(got) == 2:
                    llm.kill()
                    killed = time.monotonic()
        waited = time.monotonic() - killed
    kinds = [k for k, _ in got]
    assert kinds[0] == "sources" and kinds[-1] == "error" and "done" not in kinds, kinds
    partial = "".join(d["text"] for k, d in got if k == "delta")
    assert partial and answer.startswith(partial) and len(partial) < len(answer) / 2
    error = got[-1][1]["error"]
    assert error["type"] == "GenerationError" and error["code"] == 503, error
    assert_names_the_llm(error["message"], llm)
    assert waited < NO_HANG_S
    outcomes["REST SSE"] = True  # the error event ends the deltas: no "done", so the client knows it is partial


def test_openai_stream_ends_with_an_error_the_client_raises(kb, outcomes):
    question, answer = CASES["ja"]
    with FakeLLMProcess(slow(answer)) as llm, AppServer(create_app(pipeline=with_llm(kb, llm.url))) as app:
        client = openai.OpenAI(base_url=f"{app.url}/v1", api_key="-", max_retries=0, timeout=60)
        stream = client.chat.completions.create(
            model=COLLECTION, messages=[{"role": "user", "content": question}], stream=True
        )
        partial = ""
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                assert chunk.choices and chunk.choices[0].finish_reason is None  # never a "stop"
                partial += chunk.choices[0].delta.content or ""
                if partial and llm.proc.poll() is None:
                    llm.kill()
                    killed = time.monotonic()
        waited = time.monotonic() - killed
    assert partial and answer.startswith(partial) and len(partial) < len(answer) / 2
    assert_names_the_llm(caught.value.message, llm)
    assert waited < NO_HANG_S
    outcomes["OpenAI stream"] = True  # raised instead of finish_reason "stop"


def test_web_ui_keeps_the_partial_answer_marked_as_cut_off(kb, outcomes):
    question, answer = CASES["ar"]
    with FakeLLMProcess(slow(answer)) as llm:
        ui = WebUI(with_llm(kb, llm.url))
        outputs = []
        for output in ui.respond(question, [], Session(), COLLECTION, "none", 3, "auto"):
            outputs.append(output)
            chatbot = output[0]
            if chatbot[-1]["role"] == "assistant" and "القاهرة" in chatbot[-1]["content"] and llm.proc.poll() is None:
                llm.kill()
                killed = time.monotonic()
        waited = time.monotonic() - killed
    chatbot, box, _status, _sources, error, session = outputs[-1]
    last = chatbot[-1]["content"]
    assert [m["role"] for m in chatbot] == ["user", "assistant"]
    assert "babel-cut-off" in last and render.esc(render.CUT_OFF) in last and 'dir="rtl"' in last
    assert "babel-done" not in last and "القاهرة" in last
    assert_names_the_llm(error, llm)  # the error box
    assert box == question and session.turns == []  # the question is back in the box, to send again
    assert waited < NO_HANG_S
    outcomes["web UI"] = True


def test_cli_ask_prints_one_line_error_and_marks_the_partial_answer(kb, outcomes):
    question, answer = CASES["ru"]
    with FakeLLMProcess(slow(answer)) as llm:
        env = {
            **os.environ, "BABELRAG_LLM_BASE_URL": llm.url, "BABELRAG_LLM_MODEL": "m", "BABELRAG_LLM_MAX_RETRIES": "1",
            "BABELRAG_LLM_RETRY_BACKOFF_S": "0.1", "BABELRAG_GENERATION_TOKENIZER": "estimate",
            "BABELRAG_STORE_INDEX_DIR": str(kb.settings.store.index_dir),
        }  # fmt: skip
        args = [BABELRAG, "ask", question, "-c", COLLECTION, "--chroma-url", kb.settings.store.url, "--config", CONFIG]
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        shown = b""
        deadline = time.monotonic() + 300
        while "Москву".encode() not in shown:
            assert time.monotonic() < deadline and proc.poll() is None, shown
            shown += proc.stdout.read1(4096)
        llm.kill()
        killed = time.monotonic()
        rest, stderr = proc.communicate(timeout=NO_HANG_S * 2)
        waited = time.monotonic() - killed
    stdout, stderr = (shown + rest).decode(), stderr.decode()
    assert proc.returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in stderr, stderr
    assert_names_the_llm(lines[-1], llm)
    text, _, mark = stdout.rstrip().rpartition("\n")
    assert mark == CUT_OFF and text.endswith(" …"), stdout
    partial = text.removesuffix(" …")
    assert partial and answer.startswith(partial) and len(partial) < len(answer) / 2
    assert waited < NO_HANG_S
    outcomes["CLI"] = True
