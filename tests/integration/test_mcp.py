"""BabelRAG's MCP server through the official SDK's client: over stdio (`babelrag mcp` as a
subprocess) and over streamable HTTP (/mcp of the app `babelrag serve` runs), on a store this
module fills first. Cross-lingual: German, Japanese and Arabic queries find files in other languages."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
import yaml
from fastapi import FastAPI
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from rag import Pipeline, QueryOptions, load_settings
from rag.integrations.mcp import build_mcp_server, mount_mcp
from tests.conftest import EXAMPLES, ROOT
from tests.helpers_web import AppServer
from ui.auth import Tokens, token_of
from ui.server import create_app

pytestmark = [pytest.mark.model, pytest.mark.integration]

BABELRAG = str(Path(sys.executable).parent / "babelrag")
CONFIG = ROOT / "configs" / "cpu-small.yaml"
QUESTIONS = {q["lang"]: q for q in yaml.safe_load((EXAMPLES / "questions.yaml").read_text(encoding="utf-8"))}
# The files that answer the de, ja and ar questions, and two that do not
FILES = ["ja_security_policy.md", "ar_travel_expenses.md", "hi_leave_policy.md", "de_remote_work.md",
         "en_company_overview.md"]  # fmt: skip
READ_TOOLS = {"search", "ask", "list_collections", "list_documents", "get_chunk"}
TOKEN, READ_TOKEN, BOT_TOKEN = "s3cret-write", "s3cret-read", "s3cret-hr-bot-0123456789"


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_settings) -> Path:
    path = tmp_path_factory.mktemp("mcp-store")
    with Pipeline(load_settings(CONFIG, store={"path": str(path)})) as rag:
        report = rag.ingest([EXAMPLES / "handbook" / f for f in FILES], collection="handbook")
    assert len(report.added) == len(FILES)
    return path  # closed: the embedded store is one process's at a time, and the stdio server opens it next


@asynccontextmanager
async def stdio_session(store: Path, *flags: str) -> AsyncIterator[ClientSession]:
    server = StdioServerParameters(
        command=BABELRAG,
        args=["mcp", "--config", str(CONFIG), "--collection", "handbook", *flags],
        env={**os.environ, "BABELRAG_STORE_PATH": str(store)},  # the SDK passes on only a safe few by default
        cwd=ROOT,
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def http_session(url: str, token: str | None = None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def tool_names(session: ClientSession) -> set[str]:
    return {t.name for t in (await session.list_tools()).tools}


async def check_read_tools(session: ClientSession) -> None:
    """The same calls over either transport: cross-lingual search, listing, a chunk round trip, errors."""
    for lang, where in (("de", None), ("ja", None), ("ar", {"language": {"$ne": "ar"}})):
        q = QUESTIONS[lang]
        args = {"query": q["question"], "top_k": 3} | ({"where": where} if where else {})
        result = await session.call_tool("search", args)
        assert not result.is_error, result.content
        hits = result.structured_content["hits"]
        assert hits[0]["file_name"] == q["expected_file"], (lang, [h["file_name"] for h in hits])
        assert hits[0]["language"] == q["expected_file"][:2] != lang  # found across languages
        assert q["expected_file"] in result.content[0].text  # the text the model reads names it too
    top = hits[0]
    assert {"text", "file_name", "source", "page", "span", "language", "score", "chunk_id"} <= set(top)

    chunk = await session.call_tool("get_chunk", {"chunk_id": top["chunk_id"]})
    assert not chunk.is_error and chunk.structured_content["text"] == top["text"]
    assert chunk.structured_content["span"] == top["span"] and chunk.structured_content["source"] == top["source"]

    collections = (await session.call_tool("list_collections", {})).structured_content["collections"]
    assert [(c["name"], c["documents"]) for c in collections] == [("handbook", len(FILES))]
    documents = (await session.call_tool("list_documents", {"collection": "handbook"})).structured_content
    assert sorted(Path(d["source"]).name for d in documents["documents"]) == sorted(FILES)

    missing = await session.call_tool("search", {"query": "Urlaub", "collection": "no-such-kb"})
    assert missing.is_error and "collection 'no-such-kb' does not exist" in missing.content[0].text
    assert "babelrag ingest PATH -c no-such-kb" in missing.content[0].text  # says what to do
    bad = await session.call_tool("search", {"query": "Urlaub", "top_k": 500})
    assert bad.is_error and "top_k" in bad.content[0].text


def test_tool_schemas_come_from_query_options():
    pipeline = Pipeline(load_settings(CONFIG))  # cheap: nothing loads until a tool runs
    tools = {t.name: t for t in anyio.run(build_mcp_server(pipeline).list_tools)}
    assert set(tools) == READ_TOOLS
    ask = tools["ask"].input_schema["properties"]
    assert set(ask) == {"question", *QueryOptions.model_fields}
    assert set(tools["search"].input_schema["properties"]) == {"query", *QueryOptions.model_fields} - {"language"}
    top_k = next(s for s in ask["top_k"]["anyOf"] if s.get("type") == "integer")
    assert (top_k["minimum"], top_k["maximum"]) == (1, 200)
    assert ask["top_k"]["description"] == QueryOptions.model_fields["top_k"].description
    assert next(s for s in ask["reranker"]["anyOf"] if "enum" in s)["enum"] == ["none", "cross-encoder", "llm-listwise"]
    assert tools["ask"].output_schema["properties"]["citations"]["type"] == "array"


@pytest.mark.asyncio
async def test_stdio_read_only_by_default(store):
    async with stdio_session(store) as session:
        assert await tool_names(session) == READ_TOOLS
        await check_read_tools(session)
        refused = await session.call_tool("delete_document", {"source": "x"})
        assert refused.is_error


@pytest.mark.asyncio
async def test_stdio_allow_write_offers_delete(store):
    async with stdio_session(store, "--allow-write") as session:
        assert await tool_names(session) == READ_TOOLS | {"delete_document"}
        wrong = await session.call_tool("delete_document", {"source": "/nowhere/x.md"})
        assert wrong.is_error and "is not a document of collection 'handbook'" in wrong.content[0].text


@pytest.fixture(scope="module")
def pipeline(store):
    # opened after the stdio tests (the module's order): they need the store to themselves
    with Pipeline(load_settings(CONFIG, store={"path": str(store), "collection": "handbook"})) as rag:
        yield rag


def with_token(pipeline: Pipeline, token: str | None, **server) -> Pipeline:
    settings = pipeline.settings.model_copy(deep=True)
    settings.server = type(settings.server).model_validate({**settings.server.model_dump(), "token": token, **server})
    return Pipeline(settings, embedder=pipeline.embedder, store=pipeline.store, language=pipeline.language)


@pytest.mark.asyncio
async def test_http_without_a_token_is_open_and_read_only(pipeline):
    with AppServer(create_app(pipeline=pipeline)) as app:
        async with http_session(app.url) as session:
            assert await tool_names(session) == READ_TOOLS
            await check_read_tools(session)
            refused = await session.call_tool("delete_document", {"source": "x"})
            assert refused.is_error  # no such tool here: nobody may write without a token
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{app.url}/")).status_code == 200  # the UI still answers at /, after /mcp


@pytest.mark.asyncio
async def test_http_token_guards_mcp_and_only_the_write_token_writes(pipeline):
    guarded = with_token(pipeline, TOKEN)
    with AppServer(create_app(pipeline=guarded)) as app:
        hello = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with httpx.AsyncClient() as http:
                refused = await http.post(f"{app.url}/mcp", json=hello, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer <token>" in refused.text
        async with http_session(app.url, TOKEN) as session:
            assert await tool_names(session) == READ_TOOLS | {"delete_document"}
            found = await session.call_tool("search", {"query": QUESTIONS["ja"]["question"], "top_k": 1})
            assert found.structured_content["hits"][0]["file_name"] == "ar_travel_expenses.md"

    # a read token reads but does not see or run the write tools; a token for other collections
    # sees none of handbook's
    bot = {"name": "hr-bot", "secret": BOT_TOKEN, "scope": "write", "collections": ["hr-de"]}
    scoped = with_token(pipeline, TOKEN, read_token=READ_TOKEN, tokens=[bot])
    app = FastAPI()
    tokens = Tokens(scoped.settings.server)
    mount_mcp(app, scoped, access_of=lambda r: tokens.access_of(token_of(r)) if r else None, required=True)
    source = str(EXAMPLES / "handbook" / "en_company_overview.md")
    with AppServer(app) as served:
        async with http_session(served.url, BOT_TOKEN) as session:
            assert await tool_names(session) == READ_TOOLS | {"delete_document"}
            listed = await session.call_tool("list_collections", {})
            assert "handbook" not in {c["name"] for c in listed.structured_content["collections"]}
            for tool, args in (("search", {"query": QUESTIONS["ja"]["question"]}), ("list_documents", {}),
                               ("delete_document", {"source": source, "collection": "handbook"})):  # fmt: skip
                refused = await session.call_tool(tool, args)
                assert (
                    refused.is_error and "'hr-bot' is for collections hr-de, not 'handbook'" in refused.content[0].text
                )
        async with http_session(served.url, READ_TOKEN) as session:
            assert await tool_names(session) == READ_TOOLS
            listed = await session.call_tool("list_documents", {})
            assert not listed.is_error and len(listed.structured_content["documents"]) == len(FILES)
            refused = await session.call_tool("delete_document", {"source": source})
            assert refused.is_error and "read-only" in refused.content[0].text
        async with http_session(served.url, TOKEN) as session:
            deleted = await session.call_tool("delete_document", {"source": source})
            assert not deleted.is_error, deleted.content
            assert deleted.structured_content["collection"] == "handbook" and deleted.structured_content["chunks"] > 0
            left = (await session.call_tool("list_documents", {})).structured_content["documents"]
            assert source not in {d["source"] for d in left} and len(left) == len(FILES) - 1
