"""Export folders of rag.embedding_backends without a model: a fake build writes the files."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from rag import embedding_backends as eb
from rag.config import EmbeddingConfig, load_settings
from rag.errors import ConfigError

SPEC = eb.ExportSpec("onnx", "int8", "int8-vnni")


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def fake_build(calls: list | None = None, delay: float = 0.0):
    def build(into: Path) -> None:
        if calls is not None:
            calls.append(into)
        time.sleep(delay)
        (into / SPEC.file_name).write_bytes(b"x" * 1000)

    return build


def test_export_is_built_once_and_then_reused(model_dir, tmp_path):
    calls: list = []
    first = eb.ensure_export(model_dir, SPEC, tmp_path / "exports", build=fake_build(calls))
    again = eb.ensure_export(model_dir, SPEC, tmp_path / "exports", build=fake_build(calls))
    assert first == again and len(calls) == 1
    assert eb.is_valid_export(first)
    assert first.name.startswith("my-model-onnx-int8-vnni-")
    assert [p.name for p in (tmp_path / "exports").iterdir()] == [first.name]  # no temporary folder left


def test_changed_model_files_get_a_new_export(model_dir, tmp_path):
    first = eb.ensure_export(model_dir, SPEC, tmp_path / "e", build=fake_build())
    (model_dir / "model.safetensors").write_bytes(b"other weights")
    assert eb.ensure_export(model_dir, SPEC, tmp_path / "e", build=fake_build()) != first


@pytest.mark.parametrize("damage", ["truncate", "manifest", "delete"])
def test_a_damaged_export_is_detected_and_rebuilt(model_dir, tmp_path, damage):
    folder = eb.ensure_export(model_dir, SPEC, tmp_path / "e", build=fake_build())
    if damage == "truncate":
        (folder / SPEC.file_name).write_bytes(b"x" * 10)
    elif damage == "manifest":
        (folder / eb.MANIFEST).write_text("{not json")
    else:
        (folder / SPEC.file_name).unlink()
    assert not eb.is_valid_export(folder)
    calls: list = []
    assert eb.ensure_export(model_dir, SPEC, tmp_path / "e", build=fake_build(calls)) == folder
    assert len(calls) == 1 and eb.is_valid_export(folder)


def test_a_crashed_build_leaves_no_export_and_no_temporary_folder(model_dir, tmp_path):
    def crash(into: Path) -> None:
        (into / SPEC.file_name).write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        eb.ensure_export(model_dir, SPEC, tmp_path / "e", build=crash)
    assert list((tmp_path / "e").iterdir()) == []


def test_a_build_that_writes_no_model_file_is_an_error(model_dir, tmp_path):
    with pytest.raises(Exception, match="wrote no model.onnx"):
        eb.ensure_export(model_dir, SPEC, tmp_path / "e", build=lambda into: None)


def test_stale_temporary_folders_of_crashed_processes_are_removed(model_dir, tmp_path):
    exports = tmp_path / "e"
    stale = exports / ".my-model-onnx.crashed.tmp"
    stale.mkdir(parents=True)
    old = time.time() - eb.STALE_TEMP_S - 10
    import os

    os.utime(stale, (old, old))
    fresh = exports / ".my-model-onnx.running.tmp"  # another process exporting right now
    fresh.mkdir()
    eb.ensure_export(model_dir, SPEC, exports, build=fake_build())
    assert not stale.exists() and fresh.exists()


def test_two_threads_exporting_at_once_both_get_the_valid_export(model_dir, tmp_path):
    results, calls = [], []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                eb.ensure_export(model_dir, SPEC, tmp_path / "e", build=fake_build(calls, 0.3))
            )
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 2 and results[0] == results[1] and eb.is_valid_export(results[0])
    assert [p.name for p in (tmp_path / "e").iterdir()] == [results[0].name]


def _export_in_process(model_dir: str, exports: str, queue) -> None:
    queue.put(str(eb.ensure_export(Path(model_dir), SPEC, Path(exports), build=fake_build(delay=0.5))))


@pytest.mark.integration  # two processes
def test_two_processes_exporting_at_once_both_end_with_a_valid_model(model_dir, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_export_in_process, args=(str(model_dir), str(tmp_path / "e"), queue)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = {queue.get(timeout=5), queue.get(timeout=5)}
    assert len(got) == 1 and eb.is_valid_export(Path(got.pop()))
    assert all(p.exitcode == 0 for p in procs)


def test_manifest_lists_every_file_with_its_size(model_dir, tmp_path):
    folder = eb.ensure_export(model_dir, SPEC, tmp_path / "e", build=fake_build())
    manifest = json.loads((folder / eb.MANIFEST).read_text())
    assert manifest["files"] == {SPEC.file_name: 1000} and manifest["recipe"] == eb.RECIPE


def test_missing_packages_name_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "nncf" else real(name))
    with pytest.raises(ConfigError, match=r"nncf is not installed.*pip install 'babelrag\[openvino\]'"):
        eb.require("openvino", "int8")


def test_onnx_int8_variant_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(eb, "cpu_has_vnni", lambda: False)
    assert eb.export_spec("onnx", "int8").variant == "int8-reduced"
    monkeypatch.setattr(eb, "cpu_has_vnni", lambda: True)
    assert eb.export_spec("onnx", "int8").variant == "int8-vnni"
    assert eb.export_spec("openvino", "none").file_name == "openvino_model.xml"


@pytest.mark.parametrize(
    "values, match",
    [
        ({"backend": "onnx", "device": "cuda"}, "runs on the CPU"),
        ({"backend": "torch", "quantization": "int8"}, "needs backend onnx or openvino"),
        ({"backend": "onnx", "dtype": "bfloat16"}, "computes in float32"),
        ({"backend": "openvino", "dtype": "float16"}, "not float16"),
        ({"backend": "tensorrt"}, "embedding.backend"),
    ],
)
def test_backend_settings_are_validated(values, match):
    with pytest.raises(ConfigError, match=match):
        load_settings(embedding=values)


def test_backend_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("BABELRAG_EMBEDDING_BACKEND", "openvino")
    monkeypatch.setenv("BABELRAG_EMBEDDING_QUANTIZATION", "int8")
    e = load_settings().embedding
    assert (e.backend, e.quantization) == ("openvino", "int8")
    assert EmbeddingConfig().backend == "auto"
