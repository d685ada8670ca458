"""End to end: the official ``openai`` client, sync, async and streaming, asking BabelRAG's
OpenAI-compatible endpoint about the handbook, with real vLLM writing the answers: in the
question's language, with the file that holds the answer as source [1]. Three LLM answers in all."""

from __future__ import annotations

import asyncio

import openai
import pytest
import yaml

from rag import Pipeline, load_settings
from rag.language import dominant_language, language_identifier
from tests.conftest import EXAMPLES
from tests.e2e.conftest import CONFIG
from tests.helpers_web import AppServer
from ui.server import create_app

pytestmark = [pytest.mark.model, pytest.mark.e2e]

QUESTIONS = {q["lang"]: q for q in yaml.safe_load((EXAMPLES / "questions.yaml").read_text(encoding="utf-8"))}
TOKEN = "e2e-t0ken"


@pytest.fixture(scope="module")
def server(served, monkeypatch_module):
    for name, value in served.items():
        monkeypatch_module.setenv(name, value)
    with Pipeline(load_settings(CONFIG, server={"token": TOKEN})) as rag, AppServer(create_app(pipeline=rag)) as app:
        yield app


@pytest.fixture(scope="module")
def identify():
    return language_identifier()


def user(lang: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},  # ignored: BabelRAG writes its own prompt
        {"role": "user", "content": QUESTIONS[lang]["question"]},
    ]


def check_citations(citations: list[dict], lang: str, *, top: int = 1) -> None:
    expected = QUESTIONS[lang]["expected_file"]
    assert [c["number"] for c in citations] == list(range(1, len(citations) + 1))
    assert expected in [c["file_name"] for c in citations[:top]], citations
    first = citations[0]
    assert first["source"].endswith(first["file_name"]) and first["text"] and first["chunk_id"]
    assert first["span"][0] < first["span"][1] and first["language"] == first["file_name"][:2] != lang


def test_sync_client_answers_in_japanese_from_the_arabic_file(server, identify):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=600)
    assert [m.id for m in client.models.list().data] == ["handbook"]
    # temperature and max_tokens are accepted and ignored: the server's generation settings hold
    completion = client.chat.completions.create(model="handbook", messages=user("ja"), temperature=0.3, max_tokens=20)
    content = completion.choices[0].message.content
    print(f"\n[ja] {QUESTIONS['ja']['question']}\n-> {content}")
    assert completion.object == "chat.completion" and completion.model == "handbook"
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].message.role == "assistant"
    assert len(content) > 20 and dominant_language(identify, content) == "ja", content
    usage = completion.usage
    assert usage.prompt_tokens > 100 and usage.completion_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    check_citations(completion.model_extra["citations"], "ja")
    about = completion.model_extra["babelrag"]
    assert about["found"] and about["language"] == about["question_language"] == about["target_language"] == "ja"


def test_async_client_answers_in_german_from_the_japanese_file(server, identify):
    async def ask():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=600) as c:
            return await c.chat.completions.create(model="handbook", messages=user("de"))

    completion = asyncio.run(ask())
    content = completion.choices[0].message.content
    print(f"\n[de] {QUESTIONS['de']['question']}\n-> {content}")
    assert len(content) > 20 and dominant_language(identify, content) == "de", content
    check_citations(completion.model_extra["citations"], "de", top=3)  # de→ja ranks the file 2nd
    assert completion.usage.completion_tokens > 5


def test_streamed_answer_in_thai_from_the_english_file(server, identify):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=600)
    chunks = list(
        client.chat.completions.create(
            model="handbook", messages=user("th"), stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    *text_chunks, last, usage = chunks
    deltas = [c.choices[0].delta.content for c in text_chunks[1:]]
    assert len(deltas) > 3 and all(deltas)  # streamed, not one blob
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert last.choices[0].finish_reason == "stop" and not last.choices[0].delta.content
    about = last.model_extra["babelrag"]
    content = "".join(deltas)
    print(f"\n[th] {QUESTIONS['th']['question']}\n-> {content}")
    assert not about["replaced"] and content.strip() == about["content"]
    assert len(content) > 20 and dominant_language(identify, content) == "th" == about["language"], content
    check_citations(last.model_extra["citations"], "th")
    assert usage.choices == [] and usage.usage.prompt_tokens > 100 and usage.usage.completion_tokens > 5
