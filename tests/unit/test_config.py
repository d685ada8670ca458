from pathlib import Path

import pytest
import yaml

from rag.config import Settings, load_settings
from rag.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("BABELRAG_"):
            monkeypatch.delenv(name)


def test_default_yaml_spells_out_the_model_defaults():
    import json

    on_file = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert on_file == json.loads(Settings().model_dump_json())


def test_defaults_are_real_model_ids():
    s = load_settings()
    assert s.embedding.model == "intfloat/multilingual-e5-small"
    assert s.embedding.query_prompt == "query: " and s.embedding.document_prompt == "passage: "
    assert s.reranker.model == "BAAI/bge-reranker-v2-m3"


def test_precedence_override_over_env_over_file(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("llm:\n  model: from-file\n  max_tokens: 11\nretrieval:\n  top_k: 7\n")
    monkeypatch.setenv("BABELRAG_LLM_MODEL", "from-env")
    monkeypatch.setenv("BABELRAG_RETRIEVAL_TOP_K", "9")
    s = load_settings(cfg, retrieval={"top_k": 3})
    assert s.llm.model == "from-env"
    assert s.llm.max_tokens == 11  # file value kept where nothing overrides it
    assert s.retrieval.top_k == 3


def test_unset_cli_flags_do_not_override(monkeypatch):
    monkeypatch.setenv("BABELRAG_STORE_COLLECTION", "handbook")
    assert load_settings(store={"collection": None, "url": None}).store.collection == "handbook"


def test_env_vars_of_other_tools_are_ignored(monkeypatch):
    # provision.sh's env.sh exports these next to ours
    monkeypatch.setenv("BABELRAG_LLM_GGUF", "/x.gguf")
    monkeypatch.setenv("BABELRAG_CACHE", "/cache")
    monkeypatch.setenv("BABELRAG_VLLM_PYTHON", "/venv/bin/python")
    assert load_settings().vllm.python == "/venv/bin/python"


def test_the_user_file_sits_under_the_project_file_and_the_environment(tmp_path, monkeypatch):
    user = tmp_path / "xdg" / "babelrag" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("vllm:\n  python: /opt/vllm/bin/python\n  port: 8020\nllm:\n  base_url: http://user:1/v1\n")
    project = tmp_path / "project.yaml"
    project.write_text("vllm:\n  profile: cpu\nllm:\n  base_url: http://project:2/v1\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    s = load_settings(project)
    assert (s.vllm.python, s.vllm.port) == ("/opt/vllm/bin/python", 8020)  # kept beside the project's vllm.profile
    assert s.vllm.profile == "cpu" and s.llm.base_url == "http://project:2/v1"  # the project file wins
    monkeypatch.setenv("BABELRAG_VLLM_PYTHON", "/env/bin/python")
    assert load_settings(project).vllm.python == "/env/bin/python"  # and the environment over both


def test_a_bad_user_file_is_named(tmp_path, monkeypatch):
    user = tmp_path / "babelrag" / "config.yaml"
    user.parent.mkdir()
    user.write_text("vllm:\n  pyhton: /opt/vllm/bin/python\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match=rf"config file {user} / environment.*vllm\.pyhton"):
        load_settings()


def test_typo_in_file_is_an_error_naming_the_field(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("retrieval:\n  topk: 3\n")
    with pytest.raises(ConfigError, match=r"retrieval\.topk"):
        load_settings(cfg)


@pytest.mark.parametrize(
    "content, match",
    [
        ("chunking:\n  max_tokens: 32\n  overlap_tokens: 32\n", "overlap_tokens"),
        ("store:\n  collection: a\n", "collection name 'a' is not valid"),
        ("reranker:\n  kind: magic\n", "reranker.kind"),
        ("vllm:\n  profile: tpu\n", "profile 'tpu'"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("llm: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_values_are_rejected_with_the_reason(tmp_path, content, match):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_settings(cfg)


def test_missing_file_says_which(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nope.yaml"):
        load_settings(tmp_path / "nope.yaml")


def test_shipped_configs_load():
    for path in (ROOT / "configs").glob("*.yaml"):
        load_settings(path)


def test_auto_dtype_uses_bf16_only_where_the_hardware_has_it(monkeypatch):
    from rag import embedder

    assert embedder.resolve_dtype("float16", "cpu") == "float16"  # explicit wins
    assert embedder.resolve_dtype("auto", "cuda:0") == "bfloat16"
    monkeypatch.setattr(embedder, "cpu_has_native_bf16", lambda: False)
    assert embedder.resolve_dtype("auto", "cpu") == "float32"  # emulated bf16 was 5x slower here
    monkeypatch.setattr(embedder, "cpu_has_native_bf16", lambda: True)
    assert embedder.resolve_dtype("auto", "cpu") == "bfloat16"
