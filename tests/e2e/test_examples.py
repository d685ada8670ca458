"""The agent examples README points at run as written: examples/openai_client.py and
examples/mcp_client.py against the running app, examples/langchain_agent.py in process, all with
the real vLLM server answering."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rag import Pipeline, load_settings
from tests.conftest import EXAMPLES, ROOT
from tests.e2e.conftest import CONFIG
from tests.helpers_web import AppServer
from ui.server import create_app

pytestmark = [pytest.mark.model, pytest.mark.e2e]

TOKEN = "examples-t0ken"


def run_example(name: str, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, **env}, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\n--- {name}\n{done.stdout}")
    return done.stdout


def test_the_http_examples_answer_with_sources(served):
    with (
        Pipeline(load_settings(CONFIG, **_settings_of(served), server={"token": TOKEN})) as rag,
        AppServer(create_app(pipeline=rag)) as app,
    ):
        out = run_example(
            "openai_client.py", "Wie oft muss das Zertifikat für den Fernzugriff erneuert werden?",
            env={"BABELRAG_URL": f"{app.url}/v1", "BABELRAG_SERVER_TOKEN": TOKEN},
        )  # fmt: skip
        assert "knowledge bases: handbook" in out and "[1] " in out
        out = run_example(
            "mcp_client.py", "海外出張中の1日あたりの食事手当はいくらですか。",
            env={"BABELRAG_MCP_URL": f"{app.url}/mcp", "BABELRAG_SERVER_TOKEN": TOKEN},
        )  # fmt: skip
        assert "tools: " in out and "search" in out and "ar_travel_expenses.md" in out


def test_the_langchain_example_retrieves_and_runs_the_agent(served):
    out = run_example("langchain_agent.py", env={**served, "BABELRAG_CONFIG": CONFIG})
    top = out.splitlines()[:3]  # the retriever's hits for a German question whose answer is in Japanese
    assert any(line.startswith("ja_security_policy.md") for line in top), top
    assert "Tool Message" in out and "ar_travel_expenses.md" in out  # the agent searched and found the Arabic file


def _settings_of(env: dict[str, str]) -> dict:
    return {"store": {"path": env["BABELRAG_STORE_PATH"]}, "llm": {"base_url": env["BABELRAG_LLM_BASE_URL"]}}
