"""Small builders shared by tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from rag.types import Chunk, Hit


def hit(text: str, score: float = 0.5, source: str = "/kb/a.md", index: int = 0) -> Hit:
    chunk = Chunk(id=f"{source}#{index}", text=text, source=source, index=index, start=0, end=len(text),
                  language=None, doc_hash="h")  # fmt: skip
    return Hit(chunk=chunk, score=score, retrieval_score=score)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # many clients at once (the default backlog, 5, refuses connections)


class FakeServer:
    """A loopback HTTP server whose handler misbehaves on purpose (500s, hangs, 404s)."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                respond(self)

            def do_POST(self):
                self.body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                respond(self)

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Self:
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


class FakeLLM:
    """An OpenAI-compatible chat server that plays scripted replies, one per request, in order.

    A reply is a str (streamed in pieces of ``piece`` characters, then finish_reason "stop" and
    usage), or a dict: {"status": 503} answers that HTTP error; {"text": ..., "cut_after": n}
    streams n pieces and closes the connection without a finish reason; {"text": ..., "delay_s":
    d} waits d seconds before each piece. The last reply repeats once the script runs out.
    ``requests`` holds every chat request body; ``closed_early`` counts streams the client closed;
    ``peak_streams`` is the most answer streams that were open at the same time.
    """

    def __init__(self, *replies, max_model_len: int | None = 4096, piece: int = 4) -> None:
        self.replies = list(replies)
        self.requests: list[dict] = []
        self.closed_early = 0
        self.peak_streams = 0
        self._open_streams = 0
        self._lock = threading.Lock()
        self.max_model_len = max_model_len
        self.piece = piece
        fake = self

        def respond(handler: BaseHTTPRequestHandler) -> None:
            fake._respond(handler)

        self._server = FakeServer(respond)
        self.url = self._server.url

    def __enter__(self) -> Self:
        self._server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._server.__exit__(*exc)

    @property
    def prompts(self) -> list[str]:
        return ["\n".join(m["content"] for m in r["messages"]) for r in self.requests]

    def _respond(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        if handler.command == "GET" and path.endswith("/models"):
            model = {"id": "m", "object": "model"}
            if self.max_model_len:
                model["max_model_len"] = self.max_model_len
            return reply(200, {"object": "list", "data": [model]})(handler)
        if handler.command == "GET" and path == "/health":
            return reply(200, {})(handler)
        body = json.loads(getattr(handler, "body", b"") or b"{}")
        if path == "/tokenize":
            return reply(200, {"count": len(body.get("prompt", "").split())})(handler)
        self.requests.append(body)
        spec = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
        spec = {"text": spec} if isinstance(spec, str) else spec
        if "status" in spec:
            return reply(spec["status"], {"error": {"message": spec.get("message", "scripted failure")}})(handler)
        text, cut, delay = spec["text"], spec.get("cut_after"), spec.get("delay_s", 0)
        pieces = [text[i : i + self.piece] for i in range(0, len(text), self.piece)]

        def chunk(choices, usage=None) -> bytes:
            event = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": choices}
            if usage:
                event["usage"] = usage
            return f"data: {json.dumps(event)}\n\n".encode()

        with self._lock:
            self._open_streams += 1
            self.peak_streams = max(self.peak_streams, self._open_streams)
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.end_headers()
            for i, p in enumerate(pieces):
                if cut is not None and i >= cut:
                    handler.wfile.flush()
                    return
                time.sleep(delay)
                handler.wfile.write(chunk([{"index": 0, "delta": {"content": p}, "finish_reason": None}]))
                handler.wfile.flush()
            handler.wfile.write(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
            prompt_tokens = sum(len(m["content"].split()) for m in body.get("messages", []))
            handler.wfile.write(chunk([], {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                                           "total_tokens": prompt_tokens + len(pieces)}))  # fmt: skip
            handler.wfile.write(b"data: [DONE]\n\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.closed_early += 1
        finally:
            with self._lock:
                self._open_streams -= 1


class FakeLLMProcess:
    """FakeLLM in a process of its own (same arguments), so that a test can SIGKILL it mid-answer
    the way an LLM server dies: the connection breaks with no finish reason, and nothing answers after."""

    def __init__(self, *replies, piece: int = 4) -> None:
        self.spec = json.dumps({"replies": replies, "piece": piece})
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> Self:
        code = "import sys; from tests.helpers import FakeLLMProcess; FakeLLMProcess.serve(sys.argv[1])"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, self.spec], cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://"), f"the scripted LLM server did not start: {self.url!r}"
        return self

    def kill(self) -> None:
        """SIGKILL: the server dies at once, in the middle of whatever it was writing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    @staticmethod
    def serve(spec: str) -> None:
        data = json.loads(spec)
        with FakeLLM(*data["replies"], piece=data["piece"]) as llm:
            print(llm.url, flush=True)
            threading.Event().wait()


def store_chunks(store, collection: str, chunks, vectors) -> None:
    """Write ``chunks`` (grouped into documents by source) with their vectors the way an ingestion
    job does: manifest entries, centroid sums and state included, so derived indexes see them."""
    import numpy as np

    from ingestion.job import write_documents
    from rag.store import ManifestEntry

    vectors = np.asarray(vectors, dtype=np.float32)
    by_source: dict[str, list[int]] = {}
    for i, c in enumerate(chunks):
        by_source.setdefault(c.source, []).append(i)
    documents = []
    for source, rows in by_source.items():
        own = [chunks[i] for i in rows]
        entry = ManifestEntry(source=source, content_hash="test", chunk_ids=tuple(c.id for c in own), status="done",
                              language=own[0].language)  # fmt: skip
        documents.append((entry, own, vectors[rows]))
    write_documents(store, collection, documents)


def scrape(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A Prometheus text exposition as {(sample name, its labels): value}, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` in ``scrape``'s result (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
