"""server.max_concurrent_requests (ui/limits.py) on an ASGI app called in-process: the request
over the limit is a 429 with Retry-After in the one error shape, at once; a slot is held until the
response, streamed or not, is complete, and freed however it ended."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
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
