"""Fixtures for integration tests: a real `chroma run` server, and a `babelrag serve` process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Self

import pytest

from tests.conftest import free_port, need_env, wait_until_serving
from tests.helpers import FakeLLM
from tests.helpers_hostile import ANSWER
from tests.helpers_serve import babelrag_serve


class ChromaProcess:
    """A real `chroma run` server on its own folder and port; a test may kill it and start it again
    (same folder, same port), as a crashed or restarted server behaves."""

    def __init__(self, path: Path, port: int | None = None) -> None:
        self.path = path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Self:
        chroma = Path(sys.executable).parent / "chroma"
        self.proc = subprocess.Popen(
            [str(chroma), "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until_serving(f"{self.url}/api/v2/heartbeat", self.proc, ready=lambda r: r.status_code == 200,
                               what="chroma run")  # fmt: skip
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: it dies at once, whatever it was doing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    server = ChromaProcess(tmp_path_factory.mktemp("chroma-server")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """`babelrag serve` as its own process (the real embedding model, an embedded Chroma), its LLM
    a scripted server answering ANSWER: one for the hostile-input and load tests, which measure
    it, so the model loads once. Each test uses a collection of its own."""
    need_env("BABELRAG_EMBEDDING_MODEL")
    with FakeLLM(ANSWER) as llm, babelrag_serve(tmp_path_factory.mktemp("served"), llm.url) as server:
        yield server
