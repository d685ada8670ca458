"""End to end: an agent's `ask` through the MCP server at /mcp of `babelrag serve`'s app, with the
real vLLM: a Japanese question answered in Japanese, citing the Arabic file that holds the answer."""

from __future__ import annotations

import httpx2
import pytest
import yaml
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from rag import Pipeline, load_settings
from tests.conftest import EXAMPLES
from tests.e2e.conftest import CONFIG
from tests.helpers_web import AppServer
from ui.server import create_app

pytestmark = [pytest.mark.model, pytest.mark.e2e]

QUESTIONS = {q["lang"]: q for q in yaml.safe_load((EXAMPLES / "questions.yaml").read_text(encoding="utf-8"))}


@pytest.mark.asyncio
async def test_ask_over_mcp_answers_in_the_questions_language_with_citations(served):
    q = QUESTIONS["ja"]
    settings = load_settings(
        CONFIG, store={"path": served["BABELRAG_STORE_PATH"]}, llm={"base_url": served["BABELRAG_LLM_BASE_URL"]}
    )
    with Pipeline(settings) as rag, AppServer(create_app(pipeline=rag)) as app:
        async with (
            httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=600)) as http,  # a slow CPU LLM
            streamable_http_client(f"{app.url}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool("ask", {"question": q["question"], "collection": "handbook"})
    assert not result.is_error, result.content
    answer = result.structured_content
    print(f"\n[ja] {q['question']}\n-> {answer['answer']}\n   [1] {answer['citations'][0]['file_name']}")
    assert answer["found"] and answer["question_language"] == "ja" and answer["language"] == "ja", answer
    assert len(answer["answer"]) > 10
    top = answer["citations"][0]
    assert top["number"] == 1 and top["file_name"] == q["expected_file"]  # the Arabic file, for a Japanese question
    assert top["language"] == "ar" and top["text"] and top["span"][1] > top["span"][0] and top["chunk_id"]
    text = result.content[0].text  # what the model reads: the answer, then the numbered sources
    assert text.startswith(answer["answer"]) and f"[1] {q['expected_file']}" in text
