"""Shared fixtures. Model-backed tests read model folders through BabelRAG's own env
overrides (BABELRAG_EMBEDDING_MODEL, BABELRAG_LLM_MODEL, BABELRAG_VLLM_PYTHON); without them
they skip, unless BABELRAG_REQUIRE_MODELS=1 (CI), where a missing model is a failure."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from rag.config import Settings, load_settings
from tests.isolation import guarded

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session", autouse=True)
def _no_user_config(tmp_path_factory):
    """The user's settings file (~/.config/babelrag/config.yaml: `babelrag llm install` records
    vllm.python there) stays out of the tests and the processes they start."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
        yield


def need_env(*names: str) -> None:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        unavailable(f"{', '.join(missing)} not set; run shared/models/provision.sh and source its env.sh")


def unavailable(message: str) -> NoReturn:
    """A model or tool the test needs is missing: skip, or fail where BABELRAG_REQUIRE_MODELS=1 (CI)."""
    if os.environ.get("BABELRAG_REQUIRE_MODELS") == "1":
        pytest.fail(f"BABELRAG_REQUIRE_MODELS=1 but {message}")
    pytest.skip(message)


def wait_until_serving(
    url: str, proc: subprocess.Popen, *, ready: Callable[[httpx.Response], bool], what: str, timeout_s: float = 60
) -> None:
    """Poll ``url`` until ``ready`` says the server ``proc`` started is up; fail if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready(httpx.get(url, timeout=1)):
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, f"{what} exited during startup"
        time.sleep(0.1)
    pytest.fail(f"{what} did not answer {url} within {timeout_s:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One line per group of reliability/security cases ("reliability: kill points 24 tried, 24
# converged"), printed together at the end of the run (CI's log) and kept in
# test-artifacts/figures.txt; README's "Reliability and security" quotes them.
FIGURES: list[str] = []


@pytest.fixture(scope="session")
def figure() -> Callable[[str], None]:
    """``figure("reliability: ...")`` records one line for the end-of-run summary."""
    return FIGURES.append


def pytest_terminal_summary(terminalreporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability and security figures")
    for line in FIGURES:
        terminalreporter.write_line(line)
    out = ROOT / "test-artifacts" / "figures.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(FIGURES) + "\n", encoding="utf-8")


# Unit tests (no model/integration/e2e/slow marker) may not open sockets, start processes or read
# provisioned models, in setup, call or teardown: tests/isolation.py.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with guarded(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with guarded(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    if nextitem is None:  # the last test's teardown also ends the session's fixtures (a vLLM server)
        return (yield)
    with guarded(item):
        return (yield)


@pytest.fixture(scope="session")
def model_settings() -> Settings:
    """Settings for this machine's local models (configs/cpu-small.yaml + env)."""
    need_env("BABELRAG_EMBEDDING_MODEL")
    return load_settings(ROOT / "configs" / "cpu-small.yaml")


@pytest.fixture(scope="session")
def embedder(model_settings):
    from rag.embedder import SentenceTransformerEmbedder

    e = SentenceTransformerEmbedder(model_settings.embedding)
    e.warm_up()
    return e


@pytest.fixture(scope="session")
def language():
    from rag.language import language_identifier

    lid = language_identifier()
    lid.warm_up()
    return lid
