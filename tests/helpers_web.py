"""Serving the real app on a free port, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Self

import pytest
import uvicorn

from tests.conftest import ROOT, free_port, unavailable

CHROMIUM = os.environ.get("BABELRAG_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
# As root, offline: no sandbox, and no background calls to Google's hosts (refused here).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


class AppServer:
    """``app`` (an ASGI app) served by uvicorn in a thread, as `babelrag serve` serves it."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the app did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def need_chromium() -> str:
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} not found: apt-get install -y chromium (or set BABELRAG_CHROMIUM)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser():
    executable = need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
