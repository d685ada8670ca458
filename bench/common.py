"""What the bench scripts share: paths, the xquad files, a pipeline on a throwaway store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
XQUAD = ROOT.parent / "shared" / "data" / "xquad"
CPU_CONFIG = ROOT / "configs" / "cpu-small.yaml"
sys.path.insert(0, str(ROOT))  # run as `python bench/NAME.py` from a checkout

from rag import Pipeline, load_settings  # noqa: E402

# Embedding backends the benches compare, by name: the embedding settings each one means.
EMBEDDING_VARIANTS = {
    "torch-fp32": {"backend": "torch", "dtype": "float32"},
    "torch-bf16": {"backend": "torch", "dtype": "bfloat16"},
    "onnx-fp32": {"backend": "onnx", "quantization": "none"},
    "onnx-int8": {"backend": "onnx", "quantization": "int8"},
    "openvino-fp32": {"backend": "openvino", "dtype": "float32"},
    "openvino-int8": {"backend": "openvino", "quantization": "int8", "dtype": "float32"},
    "openvino-auto": {"backend": "openvino", "dtype": "auto"},  # OpenVINO's own choice: bf16 on AMX
    "openvino-int8-auto": {"backend": "openvino", "quantization": "int8", "dtype": "auto"},
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def scratch_pipeline(config: Path, store_path: Path, *, embedding: dict | None = None) -> Pipeline:
    """A Pipeline with ``config``'s models (``embedding`` settings over them) on a fresh embedded
    Chroma at ``store_path``."""
    settings = load_settings(config, embedding=embedding)
    settings.store.path = store_path
    settings.store.url = None
    return Pipeline(settings)
