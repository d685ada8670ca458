"""The embedding model on ONNX Runtime or OpenVINO: exported once from the model folder into a
cache folder, atomically, then run inside the same sentence-transformers model.

Why not sentence-transformers' own ``backend="onnx"`` / ``"openvino"``: both go through optimum
(optimum-onnx, optimum-intel), and no release of either on PyPI installs beside
sentence-transformers 6 (which needs transformers >= 5): optimum-onnx 0.1.0 wants
transformers < 4.58, optimum-intel 2.2.0 transformers < 5.6 and huggingface-hub < 1.22, and
optimum-onnx with transformers 5 fails on import. So BabelRAG exports with ``torch.onnx``,
quantizes with ONNX Runtime (dynamic int8) or NNCF (OpenVINO), and puts a runner where
sentence-transformers keeps the Hugging Face model (``Transformer.model``), the place optimum's
``ORTModel`` takes with ``backend="onnx"``: tokenization, prompts, pooling and normalization
stay sentence-transformers' own.

An export folder is complete or absent: it is built in a temporary folder beside it and renamed
into place, with a manifest written last that lists every file and its size. Two processes that
export at once both end with the same valid folder (the second rename loses, and its copy is
dropped); a crash leaves only a temporary folder, removed by a later export.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rag.errors import ConfigError, ModelNotFoundError

Runtime = Literal["onnx", "openvino"]
Quantization = Literal["none", "int8"]

RECIPE = 1  # raise when the export changes: folders of an older recipe get a new name and are rebuilt
MANIFEST = "babelrag-export.json"
STALE_TEMP_S = 3600  # an export takes a minute; a temporary folder this old was left by a crash
EXTRAS = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}
INT8_EXTRA = {"onnx": (), "openvino": ("nncf",)}


@dataclass(frozen=True)
class ExportSpec:
    runtime: Runtime
    quantization: Quantization
    variant: str  # what the file is; part of the folder name

    @property
    def file_name(self) -> str:
        return "model.onnx" if self.runtime == "onnx" else "openvino_model.xml"


def export_spec(runtime: Runtime, quantization: Quantization) -> ExportSpec:
    if quantization == "none":
        return ExportSpec(runtime, quantization, "fp32")
    if runtime == "onnx":
        # Without VNNI, int8 products of u8 x s8 can saturate in 16 bits; quantizing to 7 bits
        # ("reduce_range", ONNX Runtime's advice for AVX2/AVX512 without VNNI) avoids that. The
        # variant is in the folder name, so a cache shared by two kinds of CPU holds both.
        return ExportSpec(runtime, quantization, "int8-vnni" if cpu_has_vnni() else "int8-reduced")
    return ExportSpec(runtime, quantization, "int8-weights")


def require(runtime: Runtime, quantization: Quantization) -> None:
    """Fail at once, before any model is read, when the packages for ``runtime`` are missing."""
    import importlib.util

    needed = EXTRAS[runtime] + (INT8_EXTRA[runtime] if quantization == "int8" else ())
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"embedding.backend is {runtime!r}{' with int8' if quantization == 'int8' else ''}, but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; install them with "
            f"pip install 'babelrag[{runtime}]', or set embedding.backend: torch"
        )


def use_runtime(
    st, model_dir: Path, *, runtime: Runtime, quantization: Quantization, export_dir: Path, precision: str
) -> Path:
    """Replace the Hugging Face model inside ``st`` (a SentenceTransformer loaded with fp32 torch
    weights from ``model_dir``) by an ONNX Runtime / OpenVINO runner of its export. Exports first
    when ``export_dir`` has no valid export of this model. ``precision`` is OpenVINO's inference
    precision ("f32", "bf16"; "" for OpenVINO's own choice). Returns the export folder."""
    from sentence_transformers.base.modules import Transformer

    transformer = st[0]
    text = getattr(transformer, "modality_config", {}).get("text", {})
    if not isinstance(transformer, Transformer) or text.get("method") != "forward":
        raise ConfigError(
            f"embedding.backend {runtime!r} runs text encoders whose first module is a sentence-transformers "
            f"Transformer; {model_dir} starts with {type(transformer).__name__}. Set embedding.backend: torch"
        )
    hf_model = transformer.model
    input_names = list(transformer.tokenizer.model_input_names)  # input_ids, attention_mask (, token_type_ids)
    spec = export_spec(runtime, quantization)
    folder = ensure_export(
        model_dir, spec, export_dir, build=lambda into: _build(hf_model, transformer.tokenizer, input_names, spec, into)
    )
    file = folder / spec.file_name
    try:
        if runtime == "onnx":
            runner: torch.nn.Module = _OnnxRuntimeModel(file, hf_model.config, input_names)
        else:
            runner = _OpenVINOModel(file, hf_model.config, input_names, precision)
    except Exception as e:  # a file with the right size but broken inside
        raise ModelNotFoundError(
            f"the {runtime} export {file} does not load ({str(e).splitlines()[0][:200]}); delete {folder} "
            "and it is exported again on the next start"
        ) from e
    transformer.model = runner  # the torch weights go with hf_model
    return folder


def ensure_export(model_dir: Path, spec: ExportSpec, export_dir: Path, *, build) -> Path:
    """The valid export folder of ``model_dir`` for ``spec`` under ``export_dir``, made with
    ``build(folder)`` (which writes ``spec.file_name`` and what it needs) when there is none."""
    export_dir = export_dir.expanduser()
    final = export_dir / export_name(model_dir, spec)
    if is_valid_export(final):
        return final
    try:
        export_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(export_dir)
        temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=export_dir))
    except OSError as e:
        raise ConfigError(
            f"cannot write the {spec.runtime} export of {model_dir} under {export_dir} ({e.strerror}); "
            "set embedding.export_dir to a writable folder"
        ) from e
    try:
        build(temp)
        _write_manifest(temp, model_dir, spec)
        temp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        for _ in range(3):
            try:
                temp.rename(final)  # atomic; fails if final exists
                return final
            except OSError:
                if is_valid_export(final):  # another process finished first: use its copy
                    return final
                _move_aside_and_remove(final)  # corrupt or half-deleted by hand
        raise ConfigError(f"cannot put the {spec.runtime} export in place at {final}; remove it and retry")
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def export_name(model_dir: Path, spec: ExportSpec) -> str:
    """Folder name: the model, the kind of export, and a hash of what the export depends on
    (the model's files by name, size and modification time, the recipe), so a changed model
    folder gets a new export instead of a stale one."""
    model_dir = model_dir.resolve()
    files = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in model_dir.iterdir()
        if p.is_file() and (p.suffix in {".safetensors", ".bin"} or p.name == "config.json")
    )
    key = json.dumps([RECIPE, spec.runtime, spec.variant, str(model_dir), files])
    return f"{model_dir.name}-{spec.runtime}-{spec.variant}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def is_valid_export(folder: Path) -> bool:
    """The manifest is there, of this recipe, and every file it lists has the size it recorded."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return manifest["recipe"] == RECIPE and all(
            (folder / name).stat().st_size == size for name, size in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_manifest(folder: Path, model_dir: Path, spec: ExportSpec) -> None:
    files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    if spec.file_name not in files:
        raise ModelNotFoundError(f"exporting {model_dir} to {spec.runtime} wrote no {spec.file_name}")
    for name in files:  # on disk before the manifest says they are
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())
    manifest = {"recipe": RECIPE, "model": str(model_dir), "runtime": spec.runtime, "variant": spec.variant}
    manifest["files"] = files
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _move_aside_and_remove(folder: Path) -> None:
    aside = folder.with_name(f".{folder.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        folder.rename(aside)
    except FileNotFoundError:  # another process moved it already
        return
    shutil.rmtree(aside, ignore_errors=True)


def _remove_stale_temps(export_dir: Path) -> None:
    cutoff = time.time() - STALE_TEMP_S
    for temp in export_dir.glob(".*.tmp"):
        try:
            if temp.stat().st_mtime < cutoff:
                shutil.rmtree(temp, ignore_errors=True)
        except OSError:
            pass


def _build(hf_model, tokenizer, input_names: list[str], spec: ExportSpec, into: Path) -> None:
    fp32 = into / "model.onnx" if spec == ExportSpec("onnx", "none", "fp32") else into / "fp32.onnx.part"
    _export_onnx(hf_model, tokenizer, input_names, fp32)
    if spec.runtime == "onnx" and spec.quantization == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Dynamic quantization: weights int8 ahead of time, activations per batch, so no
        # calibration data is needed and no language is favoured by one.
        quantize_dynamic(
            fp32,
            into / spec.file_name,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=spec.variant == "int8-reduced",
        )
    elif spec.runtime == "openvino":
        import openvino as ov

        model = ov.Core().read_model(fp32)
        if spec.quantization == "int8":
            import nncf

            # int8 weights, computed in the inference precision: it needs no calibration texts
            # and kept the vectors at cosine 0.9999 to fp32 (bench/embed.py)
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        ov.save_model(model, into / spec.file_name, compress_to_fp16=False)
    if fp32.name != spec.file_name:
        fp32.unlink()


def _export_onnx(hf_model, tokenizer, input_names: list[str], path: Path) -> None:
    class LastHiddenState(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(input_names, inputs))).last_hidden_state

    example = tokenizer(
        ["passage: a short one", "passage: and a longer second text"], padding=True, return_tensors="pt"
    )
    axes = {name: {0: "batch", 1: "sequence"} for name in [*input_names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            LastHiddenState(hf_model).eval(),
            tuple(example[name] for name in input_names),
            str(path),
            input_names=input_names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,  # the dynamo exporter needs onnxscript and failed on dynamic sequence length
        )


def _threads() -> int:
    return torch.get_num_threads()  # what torch would use: the CPUs this process may run on


def _hidden_state_output(array: np.ndarray):
    from transformers.modeling_outputs import BaseModelOutput

    return BaseModelOutput(last_hidden_state=torch.from_numpy(array))


# A runner is what sentence-transformers' Transformer module calls in place of the Hugging Face
# model: ``forward(input_ids=..., attention_mask=...)`` returning ``last_hidden_state``, and
# ``config``. It must be a torch Module: Transformer.model is a registered child module.
class _OnnxRuntimeModel(torch.nn.Module):
    def __init__(self, file: Path, config, input_names: list[str]) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads()  # its default counts the host's cores, not ours
        options.inter_op_num_threads = 1
        # The memory arena stays on: without it batches ran 2.4x slower here (it keeps the largest
        # batch's activations allocated, which RSS shows).
        self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        self.config = config
        self.input_names = input_names

    def forward(self, **features):
        inputs = {name: features[name].numpy() for name in self.input_names}
        return _hidden_state_output(self.session.run(["last_hidden_state"], inputs)[0])


class _OpenVINOModel(torch.nn.Module):
    def __init__(self, file: Path, config, input_names: list[str], precision: str) -> None:
        super().__init__()
        import openvino as ov

        properties = {"INFERENCE_NUM_THREADS": _threads(), "PERFORMANCE_HINT": "LATENCY"}
        if precision:
            properties["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = ov.Core().compile_model(str(file), "CPU", properties)
        self.config = config
        self.input_names = input_names

    def forward(self, **features):
        request = self.compiled.create_infer_request()  # one per call: a web server encodes from two threads
        outputs = request.infer({name: features[name].numpy() for name in self.input_names})
        return _hidden_state_output(np.array(outputs[self.compiled.output(0)]))


def cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags
