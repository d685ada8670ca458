"""Starting, checking and stopping vLLM's OpenAI-compatible server for ``llm.model``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from rag.config import Settings, VLLMConfig
from rag.errors import ConfigError, GenerationError
from rag.models import resolve_model


@dataclass(frozen=True, slots=True)
class ServerCommand:
    argv: list[str]
    env: dict[str, str]  # added to the environment
    base_url: str
    profile: str


# The engine settings of VLLMConfig/VLLMProfile and their vLLM flags; the aliases vLLM also
# accepts are listed to find a flag among the free-form args.
ENGINE_FLAGS: dict[str, tuple[str, ...]] = {
    "dtype": ("--dtype",),
    "max_model_len": ("--max-model-len",),
    "gpu_memory_utilization": ("--gpu-memory-utilization",),
    "tensor_parallel_size": ("--tensor-parallel-size", "-tp"),
}


def vllm_command(settings: Settings) -> ServerCommand:
    """The vLLM command for the configured model and profile; ConfigError for contradicting settings."""
    v, llm = settings.vllm, settings.llm
    model = resolve_model(llm.model, role="LLM", setting="BABELRAG_LLM_MODEL")
    profile_name = v.resolved_profile()
    profile = v.profiles[profile_name]
    engine = engine_settings(v, profile_name)
    if profile_name == "cpu" and engine.get("dtype") == "auto":
        engine["dtype"] = cpu_dtype()
    argv = [
        v.python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--served-model-name", llm.model,
        "--host", v.host,
        "--port", str(v.port),
        *(arg for field, value in engine.items() for arg in (ENGINE_FLAGS[field][0], str(value))),
        *(["--enable-auto-tool-choice", "--tool-call-parser", v.tool_call_parser] if v.tool_call_parser else []),
        *profile.args,
        *v.extra_args,
    ]  # fmt: skip
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", **profile.env}
    return ServerCommand(argv=argv, env=env, base_url=f"http://{v.host}:{v.port}/v1", profile=profile_name)


def cpu_dtype() -> str:
    """bfloat16 where the CPU computes it natively (AVX512-BF16/AMX), else float32: emulated
    bf16 is slow. Measured on a 2-core CPU without it (Qwen2.5-0.5B, 536-token prompt): first
    token after 42 s in bfloat16, 7-9 s in float32."""
    from rag.embedder import cpu_has_native_bf16

    return "bfloat16" if cpu_has_native_bf16() else "float32"


def engine_settings(v: VLLMConfig, profile_name: str) -> dict[str, str | int | float]:
    """The engine settings that become flags: ``vllm.<field>`` over ``profiles.<name>.<field>``.

    A profile's value yields to the same flag in ``extra_args`` (which used to be the only way to
    set it); a flag both in a field and in the free-form args of the same level, or in a top-level
    field and any args, is a ConfigError, as is tensor parallelism with the cpu profile.
    """
    profile = v.profiles[profile_name]
    profile_args, extra_args = _flags(profile.args), _flags(v.extra_args)
    engine: dict[str, str | int | float] = {}
    for field, flags in ENGINE_FLAGS.items():
        top, default = getattr(v, field), getattr(profile, field)
        in_profile_args, in_extra_args = bool(profile_args.intersection(flags)), bool(extra_args.intersection(flags))
        if top is not None and (in_profile_args or in_extra_args):
            where = "vllm.extra_args" if in_extra_args else f"vllm.profiles.{profile_name}.args"
            raise ConfigError(
                f"{flags[0]} is given twice: vllm.{field} is {top} and {where} has {flags[0]} too; "
                f"keep only vllm.{field}"
            )
        if default is not None and in_profile_args:
            raise ConfigError(
                f"{flags[0]} is given twice: vllm.profiles.{profile_name}.{field} is {default} and "
                f"vllm.profiles.{profile_name}.args has {flags[0]} too; keep only the field"
            )
        value = top if top is not None else None if in_extra_args else default
        if value is not None:
            engine[field] = value
    if profile_name == "cpu" and int(engine.get("tensor_parallel_size", 1)) > 1:
        raise ConfigError(
            f"vllm.tensor_parallel_size must be 1 with the cpu profile, got {engine['tensor_parallel_size']}; "
            "tensor parallelism splits a model across GPUs: use profile gpu, or drop the setting"
        )
    return engine


def _flags(args: list[str]) -> set[str]:
    """The option names in ``args``: ``--max_model_len=8192`` names ``--max-model-len``."""
    return {a.split("=", 1)[0].replace("_", "-") for a in args if a.startswith("-")}


def _check_gpus(tensor_parallel_size: int) -> None:
    """Tensor parallelism needs that many GPUs; nvidia-smi, where there is one, says how many there are."""
    if tensor_parallel_size <= 1 or not (nvidia_smi := _which("nvidia-smi")):
        return
    try:
        listed = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return  # a broken driver is vLLM's to report
    gpus = sum(line.startswith("GPU ") for line in listed.stdout.splitlines())
    if tensor_parallel_size > gpus:
        raise ConfigError(
            f"vllm.tensor_parallel_size is {tensor_parallel_size} but `nvidia-smi -L` lists {gpus} GPU(s); "
            f"set it to at most {gpus} (BABELRAG_VLLM_TENSOR_PARALLEL_SIZE or the config file)"
        )


def _paths(settings: Settings) -> tuple[Path, Path]:
    run = settings.vllm.run_dir
    return run / f"vllm-{settings.vllm.port}.pid", run / f"vllm-{settings.vllm.port}.log"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start(settings: Settings) -> tuple[subprocess.Popen, ServerCommand, Path]:
    """Start vLLM in its own session and wait until it serves ``llm.model``; stop() ends it."""
    command = vllm_command(settings)
    v = settings.vllm
    python = command.argv[0]
    if not (Path(python).is_file() or _which(python)):
        raise ConfigError(
            f"vllm.python {python!r} is not an interpreter here; point BABELRAG_VLLM_PYTHON (or --python) "
            "at a Python that has vLLM installed"
        )
    _check_gpus(int(engine_settings(v, command.profile).get("tensor_parallel_size", 1)))
    if not _port_free(v.host, v.port):
        raise GenerationError(f"port {v.port} on {v.host} is already in use; pick another with --port")
    pid_file, log_file = _paths(settings)
    v.run_dir.mkdir(parents=True, exist_ok=True)
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            command.argv,
            env={**os.environ, **command.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    try:
        wait_ready(command.base_url, settings.llm.model, timeout_s=v.startup_timeout_s, proc=proc, log_file=log_file)
    except BaseException:
        _stop_group(proc.pid)
        pid_file.unlink(missing_ok=True)
        raise
    return proc, command, log_file


def wait_ready(base_url: str, model: str, *, timeout_s: float, proc: subprocess.Popen, log_file: Path) -> None:
    """Wait until the server is healthy and serves ``model``, or fail when ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = " | ".join(log_file.read_text(errors="replace").strip().splitlines()[-5:])
            raise GenerationError(f"vLLM exited with code {proc.returncode} while starting (log {log_file}): {tail}")
        try:
            info = server_info(base_url, timeout_s=2)
            if info.healthy and model in info.models:
                return
        except GenerationError:
            pass  # not listening yet
        time.sleep(1)
    raise GenerationError(
        f"vLLM did not serve {model!r} at {base_url} within {timeout_s:g} s (log {log_file}); "
        "raise vllm.startup_timeout_s or read the log"
    )


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What an OpenAI-compatible server says about itself (see server_info)."""

    base_url: str
    healthy: bool
    models: list[str]
    max_model_len: dict[str, int]  # context length per served model, for servers that report it (vLLM)
    version: str | None = None  # the server's version, for servers that report it (vLLM's GET /version)


def server_info(base_url: str, *, timeout_s: float = 5.0) -> ServerInfo:
    """Health and models of the server at ``base_url`` (e.g. ``http://127.0.0.1:8011/v1``).

    Healthy: GET /health at the server root answers 200 (vLLM; other servers have none, and a 404
    counts as healthy) and GET {base_url}/models lists the models. Raises GenerationError naming
    the URL when nothing answers.
    """
    base_url = base_url.rstrip("/")
    root = base_url.removesuffix("/v1")  # vLLM serves /health beside /v1, not under it
    with httpx.Client(timeout=timeout_s) as client:
        try:
            health = client.get(f"{root}/health").status_code
        except (httpx.TransportError, httpx.InvalidURL) as e:
            raise GenerationError(
                f"cannot reach the LLM server at {base_url} ({type(e).__name__}: {e}); start one with "
                "`babelrag llm serve` or point BABELRAG_LLM_BASE_URL at a running OpenAI-compatible server"
            ) from e
        try:
            listed = client.get(f"{base_url}/models")
            listed.raise_for_status()
            data = listed.json()["data"]
            models = [str(m["id"]) for m in data]
            max_model_len = {str(m["id"]): m["max_model_len"] for m in data if isinstance(m.get("max_model_len"), int)}
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return ServerInfo(base_url=base_url, healthy=False, models=[], max_model_len={})
        try:
            served = client.get(f"{root}/version")
            version = str(served.json()["version"]) if served.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            version = None
    return ServerInfo(
        base_url=base_url, healthy=health in (200, 404), models=models, max_model_len=max_model_len, version=version
    )


def stop(settings: Settings) -> bool:
    """Stop the detached server on ``vllm.port``; False when none was running."""
    pid_file, _ = _paths(settings)
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    pid_file.unlink(missing_ok=True)
    return _stop_group(pid)


def _stop_group(pid: int, grace_s: float = 30) -> bool:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        _reap(pid)
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)
