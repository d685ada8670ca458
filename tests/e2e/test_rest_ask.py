"""End to end: POST /v1/ask of the running app against real vLLM, as JSON and as server-sent
events, in two languages that are not English (two LLM calls: the CPU stand-in is slow)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import yaml

from rag import Pipeline, load_settings
from tests.conftest import EXAMPLES
from tests.e2e.conftest import CONFIG
from tests.helpers_web import AppServer
from ui.server import create_app

pytestmark = [pytest.mark.model, pytest.mark.e2e]

QUESTIONS = {q["lang"]: q for q in yaml.safe_load((EXAMPLES / "questions.yaml").read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def api(served, monkeypatch_module) -> Iterator[httpx.Client]:
    for name, value in served.items():
        monkeypatch_module.setenv(name, value)
    with (
        Pipeline(load_settings(CONFIG)) as pipeline,
        AppServer(create_app(pipeline=pipeline)) as app,
        httpx.Client(base_url=app.url, timeout=600) as client,
    ):
        yield client


def events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    name, data = None, []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield name or "message", json.loads("\n".join(data))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def test_ask_as_json_in_japanese(api):
    q = QUESTIONS["ja"]
    r = api.post("/v1/ask", json={"question": q["question"], "collection": "handbook"})
    assert r.status_code == 200, r.text
    answer = r.json()
    print(f"\n[ja] {q['question']}\n-> {answer['text']}")
    assert answer["found"] and len(answer["text"]) > 10 and answer["question_language"] == "ja"
    top = answer["citations"][0]
    assert top["number"] == 1 and top["file_name"] == q["expected_file"] and top["chunk_id"] and top["text"]
    assert answer["usage"]["prompt_tokens"] > 100 and answer["usage"]["completion_tokens"] > 5
    assert 0 < answer["timings"]["first_token"] <= answer["timings"]["total"]


def test_ask_as_events_in_thai(api):
    q = QUESTIONS["th"]
    body = {"question": q["question"], "collection": "handbook"}
    with api.stream("POST", "/v1/ask", json=body, headers={"Accept": "text/event-stream"}) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        got = list(events(s))
    kinds = [k for k, _ in got]
    assert kinds[0] == "sources" and kinds[-1] == "done" and set(kinds[1:-1]) <= {"delta", "reset"}, kinds
    assert kinds.count("delta") > 3  # streamed, not one blob
    assert got[0][1]["hits"][0]["file_name"] == q["expected_file"]  # the sources come before the first token
    shown = ""
    for kind, data in got[1:-1]:
        shown = "" if kind == "reset" else shown + data["text"]
    done = got[-1][1]
    print(f"\n[th] {q['question']}\n-> {done['text']}")
    assert done["text"] == shown.strip() and len(done["text"]) > 10
    assert done["question_language"] == "th" and done["citations"][0]["file_name"] == q["expected_file"]
    assert done["usage"]["completion_tokens"] > 5 and done["usage"]["calls"] >= 1
