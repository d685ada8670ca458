"""REST v1 (ui/rest.py) through the running app (uvicorn on a free port, httpx): the real embedding
model and an embedded Chroma holding the handbook, a scripted OpenAI-compatible LLM (FakeLLM), so
every route's answer and error shape is exact; tests/e2e/test_rest_ask.py asks real vLLM."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from rag import Pipeline, QueryOptions, load_settings
from tests.conftest import EXAMPLES, ROOT, free_port, need_env
from tests.helpers import FakeLLM
from tests.helpers_serve import wait_for_job
from tests.helpers_web import AppServer
from ui.server import create_app

pytestmark = [pytest.mark.model, pytest.mark.integration]

GERMAN = "Wie viele Zeichen muss ein Passwort mindestens haben?"
GERMAN_ANSWER = "Ein Passwort muss mindestens 14 Zeichen lang sein [1]."
QUERIES = {  # language: (query, the file that answers it)
    "de": (GERMAN, "ja_security_policy.md"),
    "ja": ("海外出張中の1日あたりの食事手当はいくらですか。", "ar_travel_expenses.md"),
    "ar": ("كم يوماً من الإجازة السنوية المدفوعة يحصل عليها الموظف بدوام كامل؟", "hi_leave_policy.md"),
    "th": ("บริษัท Nordlicht Robotics ก่อตั้งขึ้นในปี ค.ศ. ใด", "en_company_overview.md"),
    "zh": ("请解释新员工的导师陪伴期有多长，以及公司为什么特意从其他部门挑选导师。", "ru_onboarding.md"),
}
HIT_FIELDS = {
    "text", "file_name", "source", "page", "span", "start", "end", "language", "section", "title", "score",
    "retrieval_score", "chunk_id",
}  # fmt: skip


@pytest.fixture(scope="module")
def handbook(tmp_path_factory) -> Pipeline:
    need_env("BABELRAG_EMBEDDING_MODEL")
    settings = load_settings(
        ROOT / "configs" / "cpu-small.yaml",
        store={"path": str(tmp_path_factory.mktemp("chroma")), "collection": "handbook"},
        server={"upload_dir": str(tmp_path_factory.mktemp("uploads")), "max_upload_mb": 1},
        llm={"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0, "model": "m"},  # nothing listens
        generation={"tokenizer": "estimate"},
    )
    pipeline = Pipeline(settings)
    assert len(pipeline.ingest([EXAMPLES / "handbook"], "handbook").added) == 8
    return pipeline


def with_llm(pipeline: Pipeline, url: str, **server) -> Pipeline:
    settings = pipeline.settings.model_copy(deep=True)
    settings.llm.base_url = url
    settings.server = type(settings.server).model_validate({**settings.server.model_dump(), **server})
    return Pipeline(settings, embedder=pipeline.embedder, store=pipeline.store, language=pipeline.language)


@contextmanager
def serve(pipeline: Pipeline) -> Iterator[httpx.Client]:
    with AppServer(create_app(pipeline=pipeline)) as app, httpx.Client(base_url=app.url, timeout=60) as client:
        yield client


@pytest.fixture
def api(handbook) -> Iterator[httpx.Client]:
    """The app with no LLM behind it (retrieval, collections, documents, jobs need none)."""
    with serve(handbook) as client:
        yield client


def assert_error(response: httpx.Response, status: int, type_: str, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}, body
    error = body["error"]
    assert error["code"] == status and error["type"] == type_, error
    for fragment in fragments:
        assert fragment in error["message"], error
    return error


def events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    """Server-sent events as (event, data), parsed from the wire format."""
    name, data = None, []
    for line in response.iter_lines():
        if line == "":
            if name is not None or data:
                yield name or "message", json.loads("\n".join(data))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def multipart(files: list[tuple[str, str]]) -> tuple[bytes, str]:
    """A multipart body with the file names written as given (control characters included)."""
    boundary = "babel-boundary-7f3a"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: text/plain\r\n\r\n{text}\r\n".encode()
        for name, text in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_search_finds_across_languages_and_says_what_went_wrong(api):
    for language, (query, expected) in QUERIES.items():
        r = api.post("/v1/search", json={"query": query, "collection": "handbook", "top_k": 5})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert len(hits) == 5 and set(hits[0]) == HIT_FIELDS
        assert expected in [h["file_name"] for h in hits], (language, [h["file_name"] for h in hits])
        assert hits[0]["span"] == [hits[0]["start"], hits[0]["end"]] and hits[0]["text"]
    only_ja = api.post("/v1/search", json={"query": GERMAN, "collection": "handbook", "where": {"language": "ja"}})
    assert {h["language"] for h in only_ja.json()["hits"]} == {"ja"}
    assert_error(api.post("/v1/search", json={"query": GERMAN, "collection": "nope"}), 404,
                 "CollectionNotFoundError", "'nope'")  # fmt: skip
    assert_error(api.post("/v1/search", json={"query": GERMAN, "top_k": 500}), 400, "invalid_request", "top_k")
    assert_error(api.post("/v1/search", json={"query": GERMAN, "topk": 3}), 400, "invalid_request", "topk")
    assert_error(api.post("/v1/search", json={"query": "   ", "collection": "handbook"}), 400, "QueryError")
    assert_error(api.post("/v1/search", json={"q": GERMAN}), 400, "invalid_request", "query")  # FastAPI's 422
    assert_error(api.post("/v1/search", content=b"{not json", headers={"Content-Type": "application/json"}),
                 400, "invalid_request")  # fmt: skip
    assert_error(api.get("/v1/no-such-route"), 404, "not_found", "/v1/no-such-route")
    assert_error(api.post("/api/retrieve", json={"query": GERMAN}), 404, "not_found", "/v1")  # the old API: gone


def test_ask_answers_as_json_and_as_events_in_order(handbook):
    with FakeLLM(GERMAN_ANSWER) as llm, serve(with_llm(handbook, llm.url)) as api:
        r = api.post("/v1/ask", json={"question": GERMAN, "collection": "handbook"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        answer = r.json()
        assert answer["text"] == GERMAN_ANSWER and answer["found"] and answer["question_language"] == "de"
        cited = answer["citations"][0]
        assert cited["number"] == 1 and cited["cited"] and cited["file_name"] == "ja_security_policy.md"
        assert {"source", "page", "span", "text", "chunk_id"} <= set(cited) and len(cited["span"]) == 2
        assert answer["sentences"][0]["sources"] == [1] and answer["usage"]["calls"] == 1
        assert "retrieve" in answer["timings"]

        for request in (
            {"headers": {"Accept": "text/event-stream"}, "json": {"question": GERMAN, "collection": "handbook"}},
            {"json": {"question": GERMAN, "collection": "handbook", "stream": True}},
        ):
            with api.stream("POST", "/v1/ask", **request) as s:
                assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
                got = list(events(s))
            kinds = [k for k, _ in got]
            assert kinds[0] == "sources" and kinds[-1] == "done" and set(kinds[1:-1]) == {"delta"}, kinds
            assert got[0][1]["hits"][0]["file_name"] == "ja_security_policy.md"
            done = got[-1][1]
            assert done["text"] == "".join(d["text"] for k, d in got if k == "delta") == GERMAN_ANSWER
            assert done["citations"][0]["cited"] and done["usage"]["completion_tokens"] > 0

        # errors found before the stream starts are plain HTTP errors, also when events were asked for
        empty = api.post("/v1/ask", json={"question": " ", "stream": True, "collection": "handbook"})
        assert_error(empty, 400, "QueryError", "question")
        assert_error(api.post("/v1/ask", json={"question": GERMAN, "collection": "nope", "stream": True}), 404,
                     "CollectionNotFoundError")  # fmt: skip


def test_a_failing_llm_is_an_error_event_and_a_503(handbook):
    with FakeLLM({"status": 500, "message": "model crashed"}) as llm, serve(with_llm(handbook, llm.url)) as api:
        with api.stream("POST", "/v1/ask", json={"question": GERMAN, "collection": "handbook", "stream": True}) as s:
            got = list(events(s))
        assert [k for k, _ in got] == ["sources", "error"]  # told, not cut
        error = got[-1][1]["error"]
        assert error["type"] == "GenerationError" and error["code"] == 503 and "500" in error["message"]
        assert_error(api.post("/v1/ask", json={"question": GERMAN, "collection": "handbook"}), 503,
                     "GenerationError", llm.url.split("/v1")[0])  # fmt: skip


def test_a_client_that_goes_away_stops_the_llm(handbook):
    slow = {"text": "Ein Passwort muss mindestens vierzehn Zeichen lang sein, " * 20, "delay_s": 0.2}
    with FakeLLM(slow) as llm, serve(with_llm(handbook, llm.url)) as api:
        with api.stream("POST", "/v1/ask", json={"question": GERMAN, "collection": "handbook", "stream": True}) as s:
            for kind, _ in events(s):
                if kind == "delta":
                    break  # ... and close the connection
        deadline = time.monotonic() + 10
        while llm.closed_early == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert llm.closed_early == 1


def test_chat_rewrites_a_follow_up_and_answers_it(handbook):
    standalone = "Warum muss ein Passwort mindestens 14 Zeichen lang sein?"
    reply = "Weil kurze Passwörter in wenigen Stunden geknackt werden können [1]."
    with FakeLLM(standalone, reply) as llm, serve(with_llm(handbook, llm.url)) as api:
        messages = [
            {"role": "user", "content": GERMAN},
            {"role": "assistant", "content": GERMAN_ANSWER},
            {"role": "user", "content": "Und warum ist das so?"},
        ]
        with api.stream("POST", "/v1/chat", json={"messages": messages, "collection": "handbook"},
                        headers={"Accept": "text/event-stream"}) as s:  # fmt: skip
            got = list(events(s))
        done = got[-1]
        assert done[0] == "done" and done[1]["standalone_question"] == standalone and done[1]["text"] == reply
        assert GERMAN in llm.prompts[0] and standalone in llm.prompts[1]
        assert_error(api.post("/v1/chat", json={"messages": messages[:2]}), 400, "QueryError", "user")
        assert_error(api.post("/v1/chat", json={"messages": []}), 400, "invalid_request", "messages")
        assert_error(api.post("/v1/chat", json={"messages": [{"role": "system", "content": "x"}]}), 400,
                     "invalid_request", "role")  # fmt: skip


def test_upload_becomes_a_job_and_its_documents_are_searchable(api, handbook):
    r = api.post("/v1/collections", json={"name": "uploads"})
    assert r.status_code == 201 and r.json()["name"] == "uploads" and r.json()["chunks"] == 0
    assert "uploads" in [c["name"] for c in api.get("/v1/collections").json()]
    assert_error(api.post("/v1/collections", json={"name": "no spaces"}), 400, "invalid_request", "'no spaces'")
    assert_error(api.post("/v1/collections/a b/documents", files=[("files", ("x.txt", b"x"))]), 400, "invalid_request")
    files = [  # names as a hostile client sends them: raw bytes, not percent-encoded as httpx would
        ("../../../etc/ru_kantine.txt", "Кантина открыта с 11:30 до 14:00, обед стоит 6 евро."),
        ("same.txt", "Der Parkplatz hinter dem Gebäude ist für Fahrräder reserviert."),
        ("same.txt", "駐車場の奥には電気自動車の充電スタンドが四台あります。"),
        ("..\\..\\bell\x07\x1b[2J.txt", "Die Bibliothek im dritten Stock ist bis 20 Uhr geöffnet."),
    ]
    body, content_type = multipart(files)
    r = api.post("/v1/collections/uploads/documents", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 202, r.text
    job = wait_for_job(api, r.json(), timeout_s=120)
    assert job["status"] == "done" and job["files_done"] == job["files_total"] == 4, job
    assert job["chunks_written"] >= 4 and len(job["report"]["added"]) == 4
    upload_dir = Path(handbook.settings.server.upload_dir).resolve()
    documents = api.get("/v1/collections/uploads/documents").json()
    assert sorted(d["file_name"] for d in documents) == ["bell[2J.txt", "ru_kantine.txt", "same (2).txt", "same.txt"]
    assert all(upload_dir / "uploads" in Path(d["source"]).parents for d in documents)  # nothing escaped
    assert {d["file_name"]: d["language"] for d in documents}["same (2).txt"] == "ja"
    hits = api.post("/v1/search", json={"query": "Во сколько открывается столовая?", "collection": "uploads",
                                        "top_k": 1}).json()["hits"]  # fmt: skip
    assert hits[0]["file_name"] == "ru_kantine.txt"

    big = [("files", ("big.txt", b"a" * (1024 * 1024 + 1)))]
    assert_error(api.post("/v1/collections/uploads/documents", files=big), 413, "too_large", "max_upload_mb=1")
    assert not (upload_dir / "uploads" / "big.txt").exists()
    assert_error(
        api.post("/v1/collections/nope/documents", files=[("files", ("x.txt", b"x"))]), 404, "CollectionNotFoundError"
    )
    assert_error(api.post("/v1/collections/uploads/documents"), 400, "invalid_request", "files")

    r = api.delete("/v1/collections/uploads/documents", params={"file_name": "same.txt"})
    assert r.status_code == 200 and r.json()["chunks_deleted"] >= 1
    assert not (upload_dir / "uploads" / "same.txt").exists()  # its uploaded copy went too
    assert_error(api.delete("/v1/collections/uploads/documents", params={"source": "/kb/none.md"}), 404,
                 "QueryError", "is not a document")  # fmt: skip
    assert_error(api.delete("/v1/collections/uploads/documents"), 400, "QueryError", "?source=")

    with handbook.store.lease("uploads", job="test", ttl_s=60, wait_s=0):  # a job writes it
        assert_error(api.delete("/v1/collections/uploads"), 409, "LeaseHeldError")
    assert api.delete("/v1/collections/uploads").status_code == 204
    assert_error(api.delete("/v1/collections/uploads"), 404, "CollectionNotFoundError")
    assert_error(api.get("/v1/collections/uploads/documents"), 404, "CollectionNotFoundError")


def test_server_side_path_job(api):
    r = api.post("/v1/jobs", json={"paths": [str(EXAMPLES / "handbook" / "th_office_cafeteria.md")],
                                   "collection": "paths"})  # fmt: skip
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running")
    job = wait_for_job(api, r.json(), timeout_s=120)
    assert job["status"] == "done" and job["report"]["added"][0].endswith("th_office_cafeteria.md")
    assert any(j["id"] == job["id"] for j in api.get("/v1/jobs").json())
    assert_error(api.post("/v1/jobs", json={"paths": ["docs/relative"]}), 400, "IngestionError", "absolute")
    assert_error(api.get("/v1/jobs/nope"), 404, "not_found", "'nope'")
    assert api.delete("/v1/collections/paths").status_code == 204


def test_token_guards_everything_but_healthz(handbook):
    with serve(with_llm(handbook, handbook.settings.llm.base_url, token="s3cret")) as api:
        assert api.get("/healthz").json()["status"] == "ok"
        assert_error(api.get("/v1/collections"), 401, "unauthorized", "Bearer")
        assert_error(api.get("/v1/collections", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert api.get("/v1/collections", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        for closed in ("/openapi.json", "/docs", "/api/openapi.json", "/api/docs"):
            assert api.get(closed).status_code in (401, 404), closed  # no unauthenticated route lists the API
        assert "Basic" in api.get("/docs").headers["www-authenticate"]  # a browser asks for the token
        assert api.get("/docs", auth=("me", "s3cret")).status_code == 200
        schema = api.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
        assert "/v1/search" in schema["paths"] and "/v1/collections/{name}/documents" in schema["paths"]
        ready = api.get("/readyz")  # the LLM is down; without the token: no details
        assert ready.status_code == 503 and ready.json()["checks"]["llm"] == {"ok": False}


def test_request_bodies_are_query_options_fields(api):
    schema = api.get("/openapi.json").json()["components"]["schemas"]
    for body in ("SearchRequest", "AskRequest", "ChatRequest"):
        assert set(QueryOptions.model_fields) <= set(schema[body]["properties"]), body
    assert schema["SearchRequest"]["properties"]["top_k"]["anyOf"][0]["maximum"] == 200


def test_readyz_says_which_dependency_is_down(handbook):
    with serve(handbook) as api:  # llm.base_url: a free port
        r = api.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        checks = r.json()["checks"]
        assert checks["store"]["ok"] and not checks["llm"]["ok"]
        assert handbook.settings.llm.base_url.split("/v1")[0] in checks["llm"]["detail"]
    with FakeLLM("x") as llm, serve(with_llm(handbook, llm.url)) as api:
        r = api.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"]["llm"]["ok"], r.json()


def test_the_openai_client_reads_our_errors(api):
    import openai

    client = openai.OpenAI(base_url=str(api.base_url) + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.post("/search", body={"query": GERMAN, "collection": "nope"}, cast_to=httpx.Response)
    assert "collection 'nope'" in caught.value.message and caught.value.type == "CollectionNotFoundError"
