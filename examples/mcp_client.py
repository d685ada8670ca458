"""Search and ask a BabelRAG knowledge base as an agent does: through its MCP server, with the SDK's client.

    babelrag ingest examples/handbook -c handbook && babelrag serve     # in another terminal
    python examples/mcp_client.py "海外出張中の1日あたりの食事手当はいくらですか。"

BABELRAG_MCP_URL (default http://127.0.0.1:7860/mcp) and BABELRAG_SERVER_TOKEN (the server's
server.token, if it has one) say where the server is and how to get in.
"""

from __future__ import annotations

import asyncio
import os
import sys

import httpx2  # the MCP SDK's HTTP client
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

question = sys.argv[1] if len(sys.argv) > 1 else "Wie viele Tage im Jahr darf man aus dem Ausland arbeiten?"
url = os.environ.get("BABELRAG_MCP_URL", "http://127.0.0.1:7860/mcp")
token = os.environ.get("BABELRAG_SERVER_TOKEN")


async def main() -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=600)) as http,  # answers take a while
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        print("tools:", ", ".join(t.name for t in (await session.list_tools()).tools))
        found = await session.call_tool("search", {"query": question, "collection": "handbook", "top_k": 3})
        for hit in found.structured_content["hits"]:  # typed records: file, page, span, language, chunk_id
            print(f"  {hit['rank']}. {hit['file_name']} [{hit['language']}] {hit['score']:.3f}")
        answer = await session.call_tool("ask", {"question": question, "collection": "handbook"})
        print(answer.content[0].text)  # the answer with [n] markers, then its numbered sources


asyncio.run(main())
