"""The vLLM command built from the config, its contradictions, and the server's health."""

from __future__ import annotations

import shlex
import sys

import pytest
from typer.testing import CliRunner

from rag import llm_server
from rag.cli import app
from rag.config import load_settings
from rag.errors import ConfigError, GenerationError
from tests.conftest import ROOT, free_port
from tests.helpers import FakeServer, reply

CPU_SMALL = ROOT / "configs" / "cpu-small.yaml"
GPU = ROOT / "configs" / "gpu.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("BABELRAG_"):
            monkeypatch.delenv(name)
    # hub ids stay ids: nothing is looked up or downloaded
    monkeypatch.setattr(llm_server, "resolve_model", lambda name, **_: name)


def engine_flags(argv: list[str]) -> list[str]:
    """What follows the model, host and port: the flags the settings chose."""
    return argv[argv.index("--port") + 2 :]


def test_cpu_small_keeps_the_cpu_flags(monkeypatch):
    monkeypatch.setattr("rag.embedder.cpu_has_native_bf16", lambda: True)
    command = llm_server.vllm_command(load_settings(CPU_SMALL))
    assert command.profile == "cpu"
    assert engine_flags(command.argv) == [
        "--dtype", "bfloat16", "--max-model-len", "4096", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--enforce-eager",
    ]  # fmt: skip
    assert command.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert command.argv[command.argv.index("--served-model-name") + 1] == "Qwen/Qwen2.5-Coder-0.5B-Instruct"


def test_gpu_config_sets_all_four_flags():
    settings = load_settings(GPU)
    command = llm_server.vllm_command(settings)
    assert settings.llm.model == "Qwen/Qwen2.5-7B-Instruct"
    assert command.profile == "gpu" and "VLLM_CPU_KVCACHE_SPACE" not in command.env
    assert engine_flags(command.argv) == [
        "--dtype", "bfloat16", "--max-model-len", "16384", "--gpu-memory-utilization", "0.8",
        "--tensor-parallel-size", "1", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
    ]  # fmt: skip
    assert settings.embedding.device == "cuda" and settings.retrieval.top_k == 5


def test_a_top_level_field_overrides_the_profile():
    settings = load_settings(vllm={"profile": "cpu", "max_model_len": 8192, "dtype": "float32"})
    flags = engine_flags(llm_server.vllm_command(settings).argv)
    assert flags == ["--dtype", "float32", "--max-model-len", "8192", "--enforce-eager"]


@pytest.mark.parametrize(("native", "dtype"), [(True, "bfloat16"), (False, "float32")])
def test_cpu_dtype_auto_follows_native_bf16(monkeypatch, native, dtype):
    monkeypatch.setattr("rag.embedder.cpu_has_native_bf16", lambda: native)
    flags = engine_flags(llm_server.vllm_command(load_settings(vllm={"profile": "cpu"})).argv)
    assert flags[:2] == ["--dtype", dtype]


def test_extra_args_still_override_a_profile_default(monkeypatch):
    monkeypatch.setattr("rag.embedder.cpu_has_native_bf16", lambda: True)
    # before the fields existed, extra_args were the way to change the cpu profile's context
    settings = load_settings(vllm={"profile": "cpu", "extra_args": ["--max-model-len", "2048"]})
    flags = engine_flags(llm_server.vllm_command(settings).argv)
    assert flags == ["--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "2048"]


def test_profile_args_and_env_of_old_configs_still_work():
    profiles = {"mine": {"args": ["--dtype", "float16", "--swap-space", "4"], "env": {"X": "1"}}}
    command = llm_server.vllm_command(load_settings(vllm={"profile": "mine", "profiles": profiles}))
    assert engine_flags(command.argv) == ["--dtype", "float16", "--swap-space", "4"]
    assert command.env["X"] == "1"


def test_env_variables_set_the_fields(monkeypatch):
    monkeypatch.setenv("BABELRAG_VLLM_MAX_MODEL_LEN", "12000")
    monkeypatch.setenv("BABELRAG_VLLM_TENSOR_PARALLEL_SIZE", "2")
    flags = engine_flags(llm_server.vllm_command(load_settings(GPU)).argv)
    assert flags[flags.index("--max-model-len") + 1] == "12000"
    assert flags[flags.index("--tensor-parallel-size") + 1] == "2"


@pytest.mark.parametrize(
    "vllm, match",
    [
        ({"profile": "cpu", "tensor_parallel_size": 2}, "tensor_parallel_size must be 1 with the cpu profile, got 2"),
        ({"dtype": "float16", "extra_args": ["--dtype", "bfloat16"]}, "--dtype is given twice: vllm.dtype is float16"),
        ({"tensor_parallel_size": 2, "extra_args": ["-tp", "2"]}, "--tensor-parallel-size is given twice"),
        ({"max_model_len": 8192, "extra_args": ["--max_model_len=4096"]}, "vllm.extra_args has --max-model-len"),
        (
            {"gpu_memory_utilization": 0.8, "profiles": {"gpu": {"args": ["--gpu-memory-utilization", "0.5"]}}},
            "vllm.profiles.gpu.args has --gpu-memory-utilization",
        ),
        (
            {"profile": "gpu", "profiles": {"gpu": {"max_model_len": 1024, "args": ["--max-model-len", "2048"]}}},
            "vllm.profiles.gpu.max_model_len is 1024 and vllm.profiles.gpu.args has --max-model-len",
        ),
    ],
)
def test_contradicting_settings_are_config_errors(vllm, match):
    settings = load_settings(vllm={"profile": "gpu", **vllm})
    with pytest.raises(ConfigError, match=match):
        llm_server.vllm_command(settings)


@pytest.mark.parametrize(
    "vllm, match",
    [
        ({"max_model_len": 8}, "vllm.max_model_len: Input should be greater than or equal to 16"),
        ({"gpu_memory_utilization": 0}, "vllm.gpu_memory_utilization: Input should be greater than 0"),
        ({"gpu_memory_utilization": 1.5}, "vllm.gpu_memory_utilization: Input should be less than or equal to 1"),
        ({"tensor_parallel_size": 0}, "vllm.tensor_parallel_size: Input should be greater than or equal to 1"),
        ({"dtype": "half"}, "vllm.dtype: Input should be 'auto', 'bfloat16', 'float16' or 'float32'"),
    ],
)
def test_out_of_range_fields_are_rejected(vllm, match):
    with pytest.raises(ConfigError, match=match):
        load_settings(vllm=vllm)


@pytest.mark.integration  # runs a stand-in nvidia-smi
def test_more_gpus_than_nvidia_smi_lists_fails_before_starting(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-1)'\necho '  MIG 1g.10gb Device 0: (UUID: M)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    settings = load_settings(GPU, vllm={"tensor_parallel_size": 2, "python": sys.executable, "run_dir": tmp_path})
    with pytest.raises(ConfigError, match=r"tensor_parallel_size is 2 but `nvidia-smi -L` lists 1 GPU"):
        llm_server.start(settings)
    assert not list(tmp_path.glob("vllm-*"))  # nothing was started


def test_print_command_shows_the_command_and_starts_nothing(tmp_path):
    result = CliRunner().invoke(
        app, ["llm", "serve", "--print-command", "--config", str(GPU), "--port", "8123", "--python", "/venv/bin/python"]
    )
    assert result.exit_code == 0, result.output
    words = shlex.split(result.stdout)
    assert words[:2] == ["VLLM_NO_USAGE_STATS=1", "DO_NOT_TRACK=1"]
    assert words[2:5] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert words[words.index("--port") + 1] == "8123"
    assert words[words.index("--gpu-memory-utilization") + 1] == "0.8"
    assert "ready" not in result.output


def vllm_like(models: dict[str, int | None], health: int = 200):
    """/health answers ``health``, /v1/models lists ``models`` (with their max_model_len, if any)."""
    data = [{"id": m, "object": "model"} | ({"max_model_len": n} if n else {}) for m, n in models.items()]

    def respond(handler):
        if handler.path == "/health":
            reply(health, {})(handler)
        elif handler.path == "/v1/models":
            reply(200, {"object": "list", "data": data})(handler)
        else:
            reply(404, {"error": "not found"})(handler)

    return respond


def test_server_info_of_vllm_reports_max_model_len():
    with FakeServer(vllm_like({"Qwen/Qwen2.5-7B-Instruct": 16384})) as server:
        info = llm_server.server_info(server.url)
    assert info == llm_server.ServerInfo(
        base_url=server.url, healthy=True, models=["Qwen/Qwen2.5-7B-Instruct"],
        max_model_len={"Qwen/Qwen2.5-7B-Instruct": 16384},
    )  # fmt: skip


def test_server_without_health_endpoint_is_healthy_when_it_lists_models():
    with FakeServer(vllm_like({"llama": None}, health=404)) as server:
        info = llm_server.server_info(server.url + "/")
    assert info.healthy and info.models == ["llama"] and info.max_model_len == {}


def test_unhealthy_server_is_reported_not_raised():
    with FakeServer(vllm_like({"m": 4096}, health=503)) as server:
        assert not llm_server.server_info(server.url).healthy
    with FakeServer(reply(500, {"error": "boom"})) as server:
        info = llm_server.server_info(server.url)
    assert not info.healthy and info.models == []


def test_nothing_listening_is_a_generation_error_that_says_what_to_do():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(GenerationError, match=rf"cannot reach the LLM server at {url} .*`babelrag llm serve`"):
        llm_server.server_info(url, timeout_s=2)


def test_llm_status_prints_models_and_exits_1_when_down(monkeypatch, capsys):
    from rag.cli import main

    with FakeServer(vllm_like({"Qwen/Qwen2.5-7B-Instruct": 16384})) as server:
        monkeypatch.setattr(sys, "argv", ["babelrag", "llm", "status", "--base-url", server.url])
        with pytest.raises(SystemExit) as exited:
            main()
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert f"url: {server.url}" in printed and "health: ok" in printed
    assert "model: Qwen/Qwen2.5-7B-Instruct  max_model_len: 16384" in printed

    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setattr(sys, "argv", ["babelrag", "llm", "status", "--base-url", url])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the LLM server at {url}")


@pytest.mark.integration  # a stand-in server process
def test_wait_ready_returns_once_the_model_is_served(tmp_path):
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with FakeServer(vllm_like({"m": 4096})) as server:
            llm_server.wait_ready(server.url, "m", timeout_s=10, proc=proc, log_file=tmp_path / "log")
            with pytest.raises(GenerationError, match="did not serve 'other'"):
                llm_server.wait_ready(server.url, "other", timeout_s=1.5, proc=proc, log_file=tmp_path / "log")
    finally:
        proc.kill()
        proc.wait()
