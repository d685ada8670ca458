"""Fixtures for integration tests: a real `chroma run` server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    chroma = Path(sys.executable).parent / "chroma"
    port = free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "chroma run exited during startup"
            time.sleep(0.5)
        else:
            pytest.fail("chroma run did not answer its heartbeat within 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
