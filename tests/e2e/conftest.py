"""A real vLLM server started by `babelrag llm serve`, with the sample handbook ingested; shared by
every end-to-end test of this package and stopped after the last.

BABELRAG_E2E_LLM_BASE_URL=http://127.0.0.1:8011/v1 reuses a vLLM server already running (one
started by `babelrag llm serve --config configs/cpu-small.yaml --detach`) while developing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT, free_port, need_env
from tests.integration.test_cli import run

CONFIG = str(ROOT / "configs" / "cpu-small.yaml")


@pytest.fixture(scope="package")
def served(tmp_path_factory):
    need_env("BABELRAG_EMBEDDING_MODEL", "BABELRAG_LLM_MODEL", "BABELRAG_VLLM_PYTHON")
    reuse = os.environ.get("BABELRAG_E2E_LLM_BASE_URL")
    if reuse:
        env = {"BABELRAG_STORE_PATH": str(tmp_path_factory.mktemp("chroma")), "BABELRAG_LLM_BASE_URL": reuse}
        yield ingest_handbook(env)
        return
    port = free_port()
    env = {
        "BABELRAG_VLLM_RUN_DIR": str(tmp_path_factory.mktemp("vllm-run")),
        "BABELRAG_STORE_PATH": str(tmp_path_factory.mktemp("chroma")),
        "BABELRAG_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1",
    }
    started = run("llm", "serve", "--detach", "--port", str(port), "--config", CONFIG, env=env, timeout=960)
    assert started.returncode == 0, started.stderr
    assert f"BABELRAG_LLM_BASE_URL=http://127.0.0.1:{port}/v1" in started.stdout

    def stop() -> None:
        stopped = run("llm", "stop", "--port", str(port), "--config", CONFIG, env=env)
        assert f"stopped vLLM on port {port}" in stopped.stdout

    _STOPS.append(stop)
    try:
        yield ingest_handbook(env)
    finally:
        if stop in _STOPS:
            _STOPS.remove(stop)
            stop()


# tests/ has no __init__.py, so pytest runs a "package" fixture as a session one: the vLLM server
# (~4.5 GB) would live on through every integration and unit test. It stops after the last e2e test.
_STOPS: list = []


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if _STOPS and (nextitem is None or Path(__file__).parent not in Path(nextitem.path).parents):
        _STOPS.pop()()


def ingest_handbook(env: dict[str, str]) -> dict[str, str]:
    ingested = run("ingest", str(EXAMPLES / "handbook"), "-c", "handbook", "--config", CONFIG, env=env)
    assert ingested.returncode == 0, ingested.stderr
    return env


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp
