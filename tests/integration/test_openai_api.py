"""The OpenAI-compatible endpoint (/v1/models, /v1/chat/completions) driven by the official
``openai`` client against the app `babelrag serve` runs, over the real embedding model and two
handbook files. No real LLM here: a scripted server (FakeLLM) or none at all provokes the error
paths; tests/e2e/test_openai_answers.py has the answers from real vLLM."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from rag import Pipeline, load_settings
from rag.languages import not_found_message
from tests.conftest import EXAMPLES, ROOT, free_port, need_env
from tests.helpers import FakeLLM
from tests.helpers_web import AppServer
from ui.openai_api import RESET_SEPARATOR
from ui.server import create_app

pytestmark = [pytest.mark.model, pytest.mark.integration]

GERMAN = "Wie oft muss das Zertifikat für den Fernzugriff erneuert werden?"
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    need_env("BABELRAG_EMBEDDING_MODEL")
    settings = load_settings(
        ROOT / "configs" / "cpu-small.yaml",
        store={"path": str(tmp_path_factory.mktemp("chroma")), "collection": "handbook"},
        server={"upload_dir": str(tmp_path_factory.mktemp("uploads")), "token": TOKEN},
        llm={"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0},  # nothing listens there
        generation={"tokenizer": "estimate"},
    )
    rag = Pipeline(settings)
    files = [EXAMPLES / "handbook" / f for f in ("ja_security_policy.md", "de_remote_work.md")]
    assert len(rag.ingest(files, "handbook").added) == 2
    rag.create_collection("empty-kb")
    yield rag
    rag.close()


@pytest.fixture(scope="module")
def server(pipeline):
    with AppServer(create_app(pipeline=pipeline)) as app:
        yield app


def client(server, key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def with_llm(pipeline: Pipeline, url: str) -> Pipeline:
    settings = pipeline.settings.model_copy(deep=True)
    settings.llm.base_url = url
    return Pipeline(settings, embedder=pipeline.embedder, store=pipeline.store, language=pipeline.language)


def ask(model: str = "handbook", content: str = GERMAN, **kwargs):
    return {"model": model, "messages": [{"role": "user", "content": content}], **kwargs}


def test_models_are_the_knowledge_bases(server):
    models = client(server).models.list()
    by_id = {m.id: m for m in models.data}
    assert set(by_id) == {"handbook", "empty-kb"}
    handbook = by_id["handbook"]
    assert handbook.object == "model" and handbook.owned_by == "babelrag" and isinstance(handbook.created, int)
    assert handbook.model_extra["documents"] == 2 and handbook.model_extra["chunks"] > 2


def test_an_unknown_model_is_a_404_naming_the_knowledge_bases(server):
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).chat.completions.create(**ask("gpt-4o"))
    e = caught.value
    assert e.status_code == 404 and e.code == "404" and e.type == "model_not_found"
    assert "model 'gpt-4o' is not a knowledge base" in e.message and "empty-kb, handbook" in e.message
    with pytest.raises(openai.NotFoundError, match="'openai/gpt-4o' is not a knowledge base"):  # before the stream
        client(server).chat.completions.create(**ask("openai/gpt-4o"), stream=True)


def test_the_token_guards_every_route(server):
    with pytest.raises(openai.AuthenticationError) as caught:
        client(server, key="wrong").models.list()
    assert caught.value.status_code == 401 and "not one of this server's tokens" in caught.value.message
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").chat.completions.create(**ask())
    bare = httpx.post(f"{server.url}/v1/chat/completions", json=ask())  # no Authorization header
    assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
    assert "send 'Authorization: Bearer <token>'" in bare.json()["error"]["message"]
    assert bare.json()["error"]["code"] == 401
    assert [m.id for m in client(server).models.list().data]  # the right key


@pytest.mark.parametrize(
    ("request_body", "said"),
    [
        (ask(content="   "), "no user message with text"),
        ({"model": "handbook", "messages": [{"role": "system", "content": "Be brief."}]}, "no user message"),
        ({"model": "handbook", "messages": []}, "messages"),
        (ask(n=2), "n"),
        (ask(top_k=0), "top_k must be a whole number from 1 to 200, got 0"),
        (ask(reranker="bm25"), "reranker must be none | cross-encoder | llm-listwise"),
        (ask(language="German"), "language must be an ISO 639-1 code"),
        (
            {"model": "handbook", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "BabelRAG answers text only",
        ),
    ],
)
def test_bad_requests_are_400s_that_say_what_to_send(server, request_body, said):
    extra = {k: v for k, v in request_body.items() if k not in ("model", "messages")}
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(
            model=request_body["model"], messages=request_body["messages"], extra_body=extra or None
        )
    assert caught.value.status_code == 400 and said in caught.value.message, caught.value.message


def test_a_body_that_is_not_json_is_a_400(server):
    sent = httpx.post(
        f"{server.url}/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert sent.status_code == 400 and "the body is not JSON" in sent.json()["error"]["message"]


def test_the_llm_server_down_is_a_503_naming_it(server, pipeline):
    llm_url = pipeline.settings.llm.base_url.split("/v1")[0]
    for stream in (False, True):  # streaming: the first text is awaited before the response starts
        with pytest.raises(openai.InternalServerError) as caught:
            client(server).chat.completions.create(**ask(), stream=stream)
        assert caught.value.status_code == 503 and llm_url in caught.value.message
        assert caught.value.type == "GenerationError"


def test_a_follow_up_whose_rewrite_fails_is_a_503(pipeline):
    history = [
        {"role": "system", "content": "You are a helpful assistant."},  # ignored
        {"role": "user", "content": "Wie lange ist das Zertifikat gültig?"},
        {"role": "assistant", "content": "90 Tage [1]."},
        {"role": "user", "content": "Und warum so kurz?"},
    ]
    with FakeLLM({"status": 503, "message": "overloaded"}) as llm:
        with (
            AppServer(create_app(pipeline=with_llm(pipeline, llm.url))) as app,
            pytest.raises(openai.InternalServerError) as caught,
        ):
            client(app).chat.completions.create(model="handbook", messages=history)
        rewrite = llm.requests[0]["messages"]  # the history went to the follow-up rewrite, the system message not
    assert caught.value.status_code == 503
    prompt = "\n".join(m["content"] for m in rewrite)
    assert "90 Tage" in prompt and "Und warum so kurz?" in prompt and "helpful assistant" not in prompt


def test_a_client_that_goes_away_stops_the_llm(pipeline):
    slow = {"text": "Das Zertifikat muss alle 90 Tage erneuert werden [1]. " * 4, "delay_s": 0.2}
    with FakeLLM(slow) as llm, AppServer(create_app(pipeline=with_llm(pipeline, llm.url))) as app:
        stream = client(app).chat.completions.create(**ask(), stream=True)
        first = [next(stream), next(stream)]  # the role chunk, then text
        assert first[0].choices[0].delta.role == "assistant" and first[1].choices[0].delta.content
        stream.close()
        deadline = time.monotonic() + 20
        while llm.closed_early == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert llm.closed_early == 1  # the LLM's stream was closed long before its 50-odd pieces were sent


def test_a_stream_that_takes_its_text_back_says_so_and_ends_with_the_replacement(pipeline):
    # uncited, with numbers no source holds: shown at first, then replaced by "not found" in German
    invented = "Der Mount Everest ist 8848 Meter hoch und liegt im Himalaya zwischen Nepal und China."
    question = ask(content="Wie hoch ist der Mount Everest laut Handbuch?")
    with FakeLLM(invented) as llm, AppServer(create_app(pipeline=with_llm(pipeline, llm.url))) as app:
        chunks = list(client(app).chat.completions.create(**question, stream=True))
        whole = client(app).chat.completions.create(**question)
    shown = "".join(c.choices[0].delta.content or "" for c in chunks)
    before, _, after = shown.rpartition(RESET_SEPARATOR)
    assert before == invented and "*the answer states numbers that are in none of the sources*" in after
    about = chunks[-1].model_extra["babelrag"]
    assert about["replaced"] and not about["found"] and about["content"] == not_found_message("de")
    assert after.endswith(about["content"]) and chunks[-1].choices[0].finish_reason == "stop"
    assert whole.choices[0].message.content == not_found_message("de") and not whole.model_extra["babelrag"]["found"]
