"""server.max_concurrent_requests (ui/limits.py) on an ASGI app called in-process: the request
over the limit is a 429 with Retry-After in the one error shape, at once; a slot is held until the
response, streamed or not, is complete, and freed however it ended."""

from __future__ import annotations

import asyncio
import json

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ui.errors import install_error_handlers
from ui.limits import ConcurrencyLimit


def app_with_limit(limit: int, release: asyncio.Event) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/ask")
    async def ask() -> dict:
        await release.wait()
        return {"text": "Antwort"}

    @app.post("/v1/chat")
    async def chat() -> StreamingResponse:
        async def events():
            yield "event: delta\n\n"
            await release.wait()
            yield "event: done\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/search")
    async def search() -> dict:
        raise RuntimeError("the store broke")

    @app.post("/v1/collections")
    async def create() -> dict:
        return {"name": "kb"}

    app.add_middleware(ConcurrencyLimit, limit=limit, paths=("/v1/ask", "/v1/chat", "/v1/search"))
    return app


def test_the_request_over_the_limit_is_told_429_at_once_and_a_slot_frees_when_its_response_ends():
    async def scenario() -> None:
        release = asyncio.Event()
        app = app_with_limit(2, release)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://babelrag") as client:
            held = [asyncio.create_task(client.post("/v1/ask")), asyncio.create_task(client.post("/v1/chat"))]
            await asyncio.sleep(0.1)  # both are in the app now, one of them streaming
            busy = await asyncio.wait_for(client.post("/v1/ask"), 5)  # answered, not queued
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            error = busy.json()["error"]
            assert error["type"] == "rate_limited" and error["code"] == 429
            assert "server.max_concurrent_requests" in error["message"] and "retry in 1 s" in error["message"]
            assert (await client.post("/v1/collections")).status_code == 200  # writes and listings are not limited
            assert (await client.get("/v1/ask")).status_code == 405  # nor other methods
            release.set()
            done = await asyncio.gather(*held)
            assert [r.status_code for r in done] == [200, 200] and "event: done" in done[1].text
            for _ in range(3):  # a failed request gives its slot back too
                assert (await client.post("/v1/search")).status_code == 500
            assert [(await client.post("/v1/ask")).status_code for _ in range(3)] == [200, 200, 200]

    asyncio.run(scenario())


def test_on_a_json_rpc_path_only_tool_calls_take_a_slot_and_the_app_reads_every_body_whole():
    """MCP's handshake, listings and notifications are never refused (a client told 429 on its
    ``initialize`` has no session; the SDK posts ``notifications/initialized`` in the background);
    a ``tools/call``, alone or in a batch, takes a slot like any question."""

    async def scenario() -> None:
        release = asyncio.Event()
        app = FastAPI()
        install_error_handlers(app)
        seen: list[bytes] = []

        @app.post("/v1/ask")
        async def ask() -> dict:
            await release.wait()
            return {"text": "Antwort"}

        @app.post("/mcp")
        async def rpc(request: Request) -> dict:
            seen.append(await request.body())
            return {"jsonrpc": "2.0", "result": {}}

        app.add_middleware(ConcurrencyLimit, limit=1, paths=("/v1/ask",), rpc_paths=("/mcp",))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://babelrag") as client:
            held = asyncio.create_task(client.post("/v1/ask"))
            await asyncio.sleep(0.1)  # the one slot is taken
            free = [
                {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"clientInfo": {"name": "خادم"}}},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                [
                    {"jsonrpc": "2.0", "method": "notifications/cancelled"},
                    {"jsonrpc": "2.0", "id": 3, "method": "ping"},
                ],
            ]
            for body in free:
                sent = json.dumps(body, ensure_ascii=False).encode()
                answer = await client.post("/mcp", content=sent, headers={"content-type": "application/json"})
                assert answer.status_code == 200, (body, answer.text)
                assert seen[-1] == sent  # the app read the body the limit peeked at, byte for byte
            assert (await client.post("/mcp", content=b"{not json")).status_code == 200  # the app's to refuse
            call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "ask", "arguments": {}}}
            for body in (call, [{"jsonrpc": "2.0", "method": "notifications/initialized"}, call]):
                busy = await client.post("/mcp", json=body)
                assert busy.status_code == 429 and busy.headers["retry-after"] == "1", body
            huge = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "ping", "params": {"pad": "字" * 400_000}})
            assert (await client.post("/mcp", content=huge.encode())).status_code == 429  # too big to peek: counted
            release.set()
            assert (await held).status_code == 200
            assert (await client.post("/mcp", json=call)).status_code == 200  # a slot is free again
            assert (await client.post("/mcp", content=huge.encode())).status_code == 200 and seen[-1] == huge.encode()

    asyncio.run(scenario())
