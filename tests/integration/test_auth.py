"""Every route of the app `babelrag serve` runs, walked with no token, the read-only token and the
token that writes: what each may do. A route added without a guard fails the walk."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route

from rag import Pipeline, load_settings
from tests.conftest import free_port
from tests.helpers import sample, scrape
from ui.server import LoginGate, create_app

pytestmark = pytest.mark.integration

TOKEN, READ = "write-t0ken", "read-t0ken"
HR_READER, HR_WRITER = "hr-reader-0123456789", "hr-writer-0123456789"  # server.tokens for hr-* only
OPEN = {"/healthz", "/readyz"}  # liveness and readiness (details only with a token)
CATCH_ALL = {"/v1/{path:path}", "/api/{path:path}"}  # 404s in the error shape, naming where to go
WRITES = {
    ("POST", "/v1/collections"), ("DELETE", "/v1/collections/{name}"), ("POST", "/v1/collections/{name}/documents"),
    ("DELETE", "/v1/collections/{name}/documents"), ("POST", "/v1/jobs"),
}  # fmt: skip


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = load_settings(
        store={"path": tmp_path_factory.mktemp("store")},
        server={"token": TOKEN, "read_token": READ, "tokens": [
            {"name": "hr-reader", "secret": HR_READER, "collections": ["hr-de", "hr-ja"]},
            {"name": "hr-writer", "secret": HR_WRITER, "scope": "write", "collections": ["hr-de"]},
        ]},
        llm={"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0},
    )  # fmt: skip
    with Pipeline(settings) as rag, TestClient(create_app(pipeline=rag)) as c:
        yield c


def routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route but the web UI's mount, included routers flattened."""
    return _walk(app.routes, prefix="")


def _walk(table, prefix: str) -> list[tuple[str, str]]:
    found = []
    for r in table:
        if hasattr(r, "original_router"):  # FastAPI's included router
            found += _walk(r.original_router.routes, prefix + r.include_context.prefix)
        elif isinstance(r, APIRoute):
            found += [(m, prefix + r.path) for m in sorted(r.methods - {"HEAD"})]
        elif isinstance(r, Route) and not isinstance(r, Mount):
            found += [(m, prefix + r.path) for m in sorted((r.methods or {"POST"}) - {"HEAD"})]
    return found


def call(client, method: str, path: str, token: str | None):
    url = re.sub(r"\{(\w+)(:path)?\}", lambda m: {"path": "x/y"}.get(m.group(1), "nope-kb"), path)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if path == "/mcp":
        headers |= {"Accept": "application/json, text/event-stream"}
    return client.request(method, url, headers=headers, json={} if method in ("POST", "PUT", "PATCH") else None)


def test_every_route_answers_each_token_as_it_should(client, figure):
    table = routes(client.app)
    guarded = [(m, p) for m, p in table if p not in OPEN | CATCH_ALL]
    assert len(guarded) >= 17 and ("POST", "/mcp") in guarded and ("GET", "/openapi.json") in guarded
    assert WRITES <= set(guarded)
    wrong = []
    for method, path in table:
        none, bad = call(client, method, path, None), call(client, method, path, "not-a-token")
        read, write = call(client, method, path, READ), call(client, method, path, TOKEN)
        if path in OPEN:
            expected_none = none.status_code in (200, 503)
        elif path in CATCH_ALL:
            expected_none = none.status_code in (401, 404)
        else:
            expected_none = none.status_code == 401 and bad.status_code == 401
        expected_read = (read.status_code == 403) if (method, path) in WRITES else read.status_code not in (401, 403)
        if not (expected_none and expected_read and write.status_code not in (401, 403)):
            wrong.append((method, path, none.status_code, bad.status_code, read.status_code, write.status_code))
    assert not wrong, f"(method, path, none, wrong token, read token, write token): {wrong}"
    figure(
        f"security: routes {len(guarded)} checked without a token, 0 open; {len(WRITES)} that write refuse the read "
        f"token; {len(OPEN)} open by design ({', '.join(sorted(OPEN))})"
    )


def test_the_web_ui_is_closed_but_for_its_login_page(client, figure):
    """Gradio's own routes, walked like the API's: only what draws the login page answers a
    stranger (or the read token: the UI wants server.token, through its login)."""
    (mount,) = [r for r in client.app.routes if isinstance(r, Mount) and r.path == ""]
    table = routes(mount.app.app)  # the Gradio app behind the gate
    public = [(m, p) for m, p in table if p in LoginGate.PUBLIC or p.startswith(LoginGate.PUBLIC_PREFIXES)]
    shadowed = set(routes(client.app))  # e.g. /openapi.json: the API's own route answers first
    closed = [(m, p) for m, p in table if (m, p) not in public and (m, p) not in shadowed]
    assert ("GET", "/gradio_api/heartbeat/{session_hash}") in closed and ("POST", "/gradio_api/cancel") in closed
    assert len(closed) >= 40
    wrong = [
        (m, p, none.status_code, read.status_code)
        for m, p in closed
        if (none := call(client, m, p, None)).status_code != 401
        or (read := call(client, m, p, READ)).status_code != 401
    ]
    assert not wrong, f"UI routes that answer without the login (method, path, no token, read token): {wrong}"
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text  # the login page itself
    assert client.get("/config").status_code == 401  # Gradio's own check behind the page
    figure(f"security: web UI routes {len(closed)} checked without a login, 0 open; {len(public)} draw the login page")


def test_refusals_say_which_token_is_wanted(client):
    r = client.post("/v1/collections", json={"name": "newkb"}, headers={"Authorization": f"Bearer {READ}"})
    assert r.status_code == 403
    assert "the token sent (server.read_token) only reads" in r.json()["error"]["message"]
    r = client.post("/v1/search", json={"query": "Urlaub"})
    assert r.status_code == 401 and "Authorization: Bearer <token>" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/collections", json={"name": "newkb"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201, r.text


def test_a_token_for_some_collections_sees_and_reaches_only_those(client):
    def as_(token):
        return {"Authorization": f"Bearer {token}"}

    for name in ("hr-de", "finance"):
        assert client.post("/v1/collections", json={"name": name}, headers=as_(TOKEN)).status_code in (201, 409)
    listed = {c["name"] for c in client.get("/v1/collections", headers=as_(HR_READER)).json()}
    assert "hr-de" in listed and "finance" not in listed
    models = {m["id"] for m in client.get("/v1/models", headers=as_(HR_READER)).json()["data"]}
    assert "hr-de" in models and "finance" not in models
    refused = [
        client.post("/v1/search", json={"query": "Urlaubstage", "collection": "finance"}, headers=as_(HR_READER)),
        client.post("/v1/ask", json={"question": "Сколько дней отпуска?", "collection": "finance"}, headers=as_(HR_READER)),
        client.get("/v1/collections/finance/documents", headers=as_(HR_READER)),
        client.post("/v1/chat/completions", json={"model": "finance", "messages": [{"role": "user", "content": "休暇は?"}]},
                    headers=as_(HR_READER)),
        client.delete("/v1/collections/finance", headers=as_(HR_WRITER)),
        client.post("/v1/collections", json={"name": "hr-ja"}, headers=as_(HR_READER)),  # reads only
        client.post("/v1/collections", json={"name": "finance-2"}, headers=as_(HR_WRITER)),
        client.delete("/v1/collections/finance/documents", params={"source": "x.md"}, headers=as_(HR_WRITER)),
    ]  # fmt: skip
    # the OpenAI endpoint answers as OpenAI does for a model the key cannot see: 404, model not found
    assert [r.status_code for r in refused] == [403, 403, 403, 404, 403, 403, 403, 403], [r.text for r in refused]
    assert "'hr-reader' is for collections hr-de, hr-ja, not 'finance'" in refused[0].json()["error"]["message"]
    assert refused[0].json()["error"]["type"] in ("forbidden", "AccessDeniedError")
    assert (
        client.post("/v1/search", json={"query": "Urlaub", "collection": "hr-de"}, headers=as_(HR_READER)).status_code
        == 200
    )
    gone = client.delete("/v1/collections/hr-de", headers=as_(HR_WRITER))
    assert gone.status_code == 204, gone.text


def test_readiness_details_only_with_a_token(client):
    open_ = client.get("/readyz").json()
    assert open_["checks"]["llm"] == {"ok": False}  # no detail without a token
    shown = client.get("/readyz", headers={"Authorization": f"Bearer {READ}"}).json()
    assert "cannot reach the LLM server" in shown["checks"]["llm"]["detail"]


def test_metrics_are_read_scoped_and_count_requests_by_route_template(client):
    assert client.get("/metrics").status_code == 401
    client.get("/v1/collections/nope-kb/documents", headers={"Authorization": f"Bearer {READ}"})
    r = client.get("/metrics", headers={"Authorization": f"Bearer {READ}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=")
    got = scrape(r.text)
    by_template = {"method": "GET", "route": "/v1/collections/{name}/documents", "status": "404"}
    assert sample(got, "babelrag_http_requests_total", **by_template) >= 1  # the template, not /v1/.../nope-kb/...
    assert sample(got, "babelrag_http_requests_total", method="GET", route="/metrics", status="401") >= 1
    assert sample(got, "babelrag_up", component="store") == 1 and sample(got, "babelrag_up", component="llm") == 0
    assert sample(got, "process_resident_memory_bytes") > 0


def test_a_read_token_without_a_token_is_a_config_error():
    from rag import ConfigError

    with pytest.raises(ConfigError, match="read_token is set but token is not"):
        load_settings(server={"read_token": READ})
