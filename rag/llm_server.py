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

from rag.config import Settings
from rag.errors import ConfigError, GenerationError
from rag.models import resolve_model


@dataclass(frozen=True, slots=True)
class ServerCommand:
    argv: list[str]
    env: dict[str, str]  # added to the environment
    base_url: str
    profile: str


def vllm_command(settings: Settings) -> ServerCommand:
    """The vLLM command for the configured model and profile (cpu flags, or vLLM's defaults)."""
    v, llm = settings.vllm, settings.llm
    model = resolve_model(llm.model, role="LLM", setting="BABELRAG_LLM_MODEL")
    profile_name = v.resolved_profile()
    profile = v.profiles[profile_name]
    argv = [
        v.python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--served-model-name", llm.model,
        "--host", v.host,
        "--port", str(v.port),
        *profile.args,
        *v.extra_args,
    ]  # fmt: skip
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", **profile.env}
    return ServerCommand(argv=argv, env=env, base_url=f"http://{v.host}:{v.port}/v1", profile=profile_name)


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
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = " | ".join(log_file.read_text(errors="replace").strip().splitlines()[-5:])
            raise GenerationError(f"vLLM exited with code {proc.returncode} while starting (log {log_file}): {tail}")
        try:
            served = [m["id"] for m in httpx.get(f"{base_url}/models", timeout=2).json()["data"]]
            if model in served:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(1)
    raise GenerationError(
        f"vLLM did not serve {model!r} at {base_url} within {timeout_s:g} s (log {log_file}); "
        "raise vllm.startup_timeout_s or read the log"
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
