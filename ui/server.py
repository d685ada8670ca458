"""One FastAPI app: the REST API under /v1 and the Gradio web UI at /, served by `babelrag serve`."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
from fastapi import FastAPI, Request
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

import rag
from rag import Pipeline, Settings, load_settings
from rag.integrations.mcp import mount_mcp
from ui import observability, openai_api, rest
from ui.auth import AccessMiddleware, Tokens, token_of
from ui.errors import error_response
from ui.limits import ConcurrencyLimit
from ui.web import CSS, JS, WebUI

log = logging.getLogger(__name__)

# System fonts only: the default theme's Google Fonts cannot load on an offline machine.
THEME = gr.themes.Soft(
    font=["system-ui", "Noto Sans", "Noto Sans CJK JP", "sans-serif"],
    font_mono=["ui-monospace", "DejaVu Sans Mono", "monospace"],
)


# The routes that answer questions and searches: server.max_concurrent_requests bounds them together.
ANSWERING_PATHS = ("/v1/search", "/v1/ask", "/v1/chat", "/v1/chat/completions")
# MCP at /mcp: only its tool calls answer; its handshake, listings and notifications are never refused.
MCP_PATH = "/mcp"


def create_app(settings: Settings | None = None, *, pipeline: Pipeline | None = None) -> FastAPI:
    """The app ``babelrag serve`` runs. Cheap: models load on the first request that needs them."""
    pipeline = pipeline or Pipeline(settings or load_settings())
    s = pipeline.settings.server
    tokens = Tokens(s)

    def authorize(request: Request) -> None:  # reads: any of the server's tokens
        tokens.check(request)

    def authorize_write(request: Request) -> None:  # writes: a token whose scope writes
        tokens.check(request, write=True)

    def login(_user: str, password: str) -> bool:  # the web UI: server.token only
        return tokens.is_admin(password)

    # docs_url/openapi_url None: rest.install serves both behind the token
    app = FastAPI(title="BabelRAG", version=rag.__version__, docs_url=None, openapi_url=None)
    rest.install(app, pipeline, authorize, authorize_write)
    openai_api.install(app, pipeline, authorize)  # /v1/models, /v1/chat/completions
    mount_mcp(  # MCP at /mcp: the same tokens, the same scopes
        app,
        pipeline,
        access_of=lambda r: tokens.access_of(token_of(r)) if r is not None else None,
        required=tokens.required,
        path=MCP_PATH,
    )
    observability.install(app, pipeline, authorize)  # GET /metrics (reads), X-Request-ID, access log, request metrics
    ui = WebUI(pipeline)
    blocks = ui.blocks()
    blocks.queue(default_concurrency_limit=s.concurrency)
    rest.install_not_found(app)  # keep last before the UI's mount: it answers every /v1 path no router took
    app.add_middleware(ConcurrencyLimit, limit=s.max_concurrent_requests, paths=ANSWERING_PATHS, rpc_paths=(MCP_PATH,))
    gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth=login if s.token is not None else None,
        auth_message="This BabelRAG server is private: enter its token as the password (any user name).",
        footer_links=[],
        max_file_size=f"{s.max_upload_mb}mb",
        ssr_mode=False,
        show_error=False,
        theme=THEME,
        css=CSS,
        js=JS,
        allowed_paths=[],
    )
    if tokens.required:
        (mount,) = [r for r in app.routes if isinstance(r, Mount) and r.path == ""]
        mount.app = LoginGate(mount.app, tokens)
    app.add_middleware(AccessMiddleware, tokens=tokens)  # each request runs as its token's Access
    return app


class LoginGate:
    """ASGI, in front of the Gradio UI when a token is configured: only what draws the login page
    is open; every other path wants a logged-in session (Gradio's cookie) or the token as a bearer.

    Gradio checks the login on most of its routes, but not all: its heartbeat stream (held open
    for as long as a client likes), /gradio_api/cancel and /gradio_api/stream/{id} answer anyone.
    Here nothing does that a stranger could use, whatever a Gradio release adds."""

    PUBLIC = frozenset({
        "/", "/login", "/login/", "/logout", "/config", "/config/", "/favicon.ico", "/theme.css", "/robots.txt",
        "/manifest.json", "/gradio_api/theme.css", "/gradio_api/login_check", "/gradio_api/login_check/",
        "/gradio_api/app_id", "/gradio_api/app_id/", "/gradio_api/startup-events",
    })  # fmt: skip
    PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")

    def __init__(self, app: ASGIApp, tokens: Tokens) -> None:
        self.app, self.tokens = app, tokens

    def _logged_in(self, request: Request) -> bool:
        gradio = self.app  # gradio.routes.App: its login cookie names the session in .tokens
        cookie_id = getattr(gradio, "cookie_id", None)
        for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
            session = request.cookies.get(name)
            if session and getattr(gradio, "tokens", {}).get(session) is not None:
                return True
        return self.tokens.is_admin(token_of(request))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "lifespan" or path in self.PUBLIC or path.startswith(self.PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        if not self._logged_in(Request(scope)):
            response = error_response(
                401, f"{path} is part of this server's web UI, which is private: log in at / with its token "
                "(server.token) as the password, or send 'Authorization: Bearer <server.token>'",
            )  # fmt: skip
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
