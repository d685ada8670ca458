"""Small builders shared by tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rag.types import Chunk, Hit


def hit(text: str, score: float = 0.5, source: str = "/kb/a.md", index: int = 0) -> Hit:
    chunk = Chunk(id=f"{source}#{index}", text=text, source=source, index=index, start=0, end=len(text),
                  language=None, doc_hash="h")  # fmt: skip
    return Hit(chunk=chunk, score=score, retrieval_score=score)


class FakeServer:
    """A loopback HTTP server whose handler misbehaves on purpose (500s, hangs, 404s)."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                respond(self)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                respond(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def reply(status: int, body: dict, delay_s: float = 0) -> Callable[[BaseHTTPRequestHandler], None]:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(delay_s)
        data = json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    return respond
