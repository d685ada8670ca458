"""One FastAPI app: the REST API under /v1 and the Gradio web UI at /, served by `babelrag serve`."""

from __future__ import annotations

import hmac
import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
from fastapi import FastAPI, Request

import rag
from rag import Pipeline, Settings, load_settings
from rag.integrations.mcp import mount_mcp
from ui import openai_api, rest
from ui.web import CSS, JS, WebUI

log = logging.getLogger(__name__)

# System fonts only: the default theme's Google Fonts cannot load on an offline machine.
THEME = gr.themes.Soft(
    font=["system-ui", "Noto Sans", "Noto Sans CJK JP", "sans-serif"],
    font_mono=["ui-monospace", "DejaVu Sans Mono", "monospace"],
)


def create_app(settings: Settings | None = None, *, pipeline: Pipeline | None = None) -> FastAPI:
    """The app ``babelrag serve`` runs. Cheap: models load on the first request that needs them."""
    pipeline = pipeline or Pipeline(settings or load_settings())
    s = pipeline.settings.server
    token = s.token.get_secret_value() if s.token is not None else None
    read_token = s.read_token.get_secret_value() if s.read_token is not None else None

    def authorize(request: Request) -> None:  # reads: server.token or server.read_token
        rest.check_token(request, token, read_token=read_token)

    def authorize_write(request: Request) -> None:  # writes: server.token only
        rest.check_token(request, token, read_token=read_token, write=True)

    def login(_user: str, password: str) -> bool:
        return token is not None and hmac.compare_digest(password.encode(), token.encode())

    # docs_url/openapi_url None: rest.install serves both behind the token
    app = FastAPI(title="BabelRAG", version=rag.__version__, docs_url=None, openapi_url=None)
    rest.install(app, pipeline, authorize, authorize_write)
    openai_api.install(app, pipeline, authorize)  # /v1/models, /v1/chat/completions
    mount_mcp(app, pipeline, token=token, read_token=read_token)  # MCP at /mcp: the same tokens; writes need token
    ui = WebUI(pipeline)
    blocks = ui.blocks()
    blocks.queue(default_concurrency_limit=s.concurrency)
    rest.install_not_found(app)  # keep last before the UI's mount: it answers every /v1 path no router took
    return gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth=login if token is not None else None,
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
