"""End to end: a LangChain agent (``langchain.agents.create_agent``) on the real vLLM server
(``--enable-auto-tool-choice --tool-call-parser hermes``) through ``langchain_openai.ChatOpenAI``,
with BabelRAG's search tool over the ingested handbook; and the ask tool on the real LLM.

Measured first (bench/agent_tools.py, 16 questions in 8 languages): with tool_choice auto the
0.5B stand-in's tool calls never parse (it writes the call as bare JSON, without the <tool_call>
tags of the hermes format); forced by a named tool_choice (``SearchFirst``) they parse 16 of 16.
So the agent here searches first, forced, then answers without tools offered; the test asserts
the call, its query and what it found, not the wording of the small model's answer. The agent
loop with a model that chooses its own calls is tests/integration/test_langchain.py's (scripted).
Three LLM calls in all."""

from __future__ import annotations

import pytest
import yaml
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from rag import Pipeline, load_settings
from rag.integrations.langchain import AGENT_SYSTEM_PROMPT, SearchFirst, ask_tool, search_tool
from rag.language import dominant_language
from tests.conftest import EXAMPLES
from tests.e2e.conftest import CONFIG

pytestmark = [pytest.mark.model, pytest.mark.e2e]

QUESTIONS = {q["lang"]: q for q in yaml.safe_load((EXAMPLES / "questions.yaml").read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def pipeline(served, monkeypatch_module):
    for name, value in served.items():
        monkeypatch_module.setenv(name, value)
    with Pipeline(load_settings(CONFIG)) as rag:
        yield rag


@pytest.fixture(scope="module")
def chat_model(served, pipeline):
    return ChatOpenAI(
        base_url=served["BABELRAG_LLM_BASE_URL"], model=pipeline.settings.llm.model, api_key="x", temperature=0,
        max_tokens=pipeline.settings.llm.max_tokens, timeout=pipeline.settings.llm.timeout_s,
    )  # fmt: skip


def test_agent_searches_the_knowledge_base_for_a_japanese_question(pipeline, chat_model):
    q = QUESTIONS["ja"]  # its answer is only in the Arabic file
    search = search_tool(pipeline, collection="handbook")
    agent = create_agent(
        chat_model, [search], system_prompt=AGENT_SYSTEM_PROMPT, middleware=[SearchFirst(then="answer")]
    )
    result = agent.invoke({"messages": [HumanMessage(q["question"])]})
    messages = result["messages"]
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    tools = [m for m in messages if isinstance(m, ToolMessage)]
    assert len(calls) == 1 and calls[0]["name"] == "search_knowledge_base", messages
    assert len(tools) == 1 and tools[0].status == "success" and tools[0].tool_call_id == calls[0]["id"]
    query = calls[0]["args"]["query"]
    assert dominant_language(pipeline.language, query) == "ja", query  # measured: the question itself
    hits = tools[0].artifact["hits"]
    assert q["expected_file"] in [h["file_name"] for h in hits], [h["file_name"] for h in hits]
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content.strip()
    print(f"\nquery: {query}\nfound: {[h['file_name'] for h in hits]}\nagent's answer: {final.content[:300]}")


@pytest.mark.asyncio
async def test_ask_tool_answers_in_the_questions_language_with_its_sources(pipeline):
    q = QUESTIONS["ja"]
    ask = ask_tool(pipeline, collection="handbook")
    call = {"type": "tool_call", "id": "call-ask", "name": ask.name, "args": {"question": q["question"]}}
    message = await ask.ainvoke(call)  # Pipeline.aask: retrieval in a thread, the LLM on the async client
    assert isinstance(message, ToolMessage) and message.status == "success"
    artifact = message.artifact
    assert artifact["found"] and artifact["question_language"] == "ja" and artifact["language"] == "ja"
    top = artifact["citations"][0]
    assert top["number"] == 1 and top["file_name"] == q["expected_file"] and top["text"]
    answer, sources = message.content.split("\n\nSources:\n")
    assert answer == artifact["answer"]  # then the sources it cites (all given, when it cites none)
    listed = [c for c in artifact["citations"] if f"[{c['number']}] {c['file_name']}" in sources]
    assert listed and all(c["cited"] for c in listed) or len(listed) == len(artifact["citations"]), sources
    print(f"\n{message.content}")
