"""Embedding stage: texts -> unit vectors, with explicit query vs document prompts."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rag.config import EmbeddingConfig
from rag.errors import ModelNotFoundError
from rag.logs import transformers_through_root
from rag.models import missing_model, resolve_model


@runtime_checkable
class Embedder(Protocol):
    @property
    def model_id(self) -> str: ...

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, text: str) -> int: ...

    @property
    def max_tokens(self) -> int:
        """Longest input the model reads, prompt included; longer text is truncated."""
        ...

    @property
    def fingerprint(self) -> dict[str, str | int]:
        """What the document vectors depend on: stored with a collection, checked on every write."""
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers bi-encoder (multilingual-e5, bge-m3, ...). Loads in ``warm_up``."""

    def __init__(self, config: EmbeddingConfig | None = None) -> None:
        self.config = config or EmbeddingConfig()
        self._model = None
        self.dtype: str | None = None  # resolved in warm_up
        self.backend: str | None = None  # resolved in warm_up: torch, onnx or openvino
        self.export: Path | None = None  # the onnx/openvino export folder in use
        self._loading = threading.Lock()  # a web server's first requests may arrive together

    @property
    def model_id(self) -> str:
        return self.config.model

    @property
    def model(self):  # the loaded SentenceTransformer
        if self._model is None:
            self.warm_up()
        return self._model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def max_tokens(self) -> int:
        """Longest input the model reads, prompt included; longer text is truncated."""
        return int(self.model.max_seq_length)

    def warm_up(self) -> None:
        if self._model is not None:
            return
        with self._loading:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        name = resolve_model(self.config.model, role="embedding", setting="BABELRAG_EMBEDDING_MODEL")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()
        transformers_through_root()
        device = resolve_device(self.config.device)
        self.backend = resolve_backend(self.config.backend, device)
        self.dtype = resolve_dtype(self.config.dtype, device)
        runtime = self.backend != "torch"
        if runtime:
            from rag import embedding_backends

            embedding_backends.require(self.backend, self.config.quantization)  # before the slow part
        try:
            # an export is made from the fp32 weights, whatever it then computes in
            dtype = torch.float32 if runtime else getattr(torch, self.dtype)
            model = SentenceTransformer(name, device=device, model_kwargs={"dtype": dtype})
        except (OSError, ValueError) as e:
            raise missing_model(
                self.config.model, role="embedding", setting="BABELRAG_EMBEDDING_MODEL", why=str(e).splitlines()[0]
            ) from e
        if runtime:
            folder = (
                Path(name)
                if Path(name).is_dir()
                else Path(resolve_model(name, role="embedding", setting="BABELRAG_EMBEDDING_MODEL"))
            )
            precision = {"float32": "f32", "bfloat16": "bf16"}.get(self.dtype, "")
            self.export = embedding_backends.use_runtime(
                model,
                folder,
                runtime=self.backend,
                quantization=self.config.quantization,
                export_dir=self.config.export_dir,
                precision=precision,
            )
            self.dtype = (
                "int8" if self.config.quantization == "int8" else "float32" if self.backend == "onnx" else self.dtype
            )
        self._model = model

    def _encode(self, texts: Sequence[str], prompt: str | None, *, query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encode = self.model.encode_query if query else self.model.encode_document
        kwargs = {} if prompt is None else {"prompt": prompt}
        vectors = encode(
            list(texts),
            batch_size=self.config.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
            **kwargs,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.config.query_prompt, query=True)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.config.document_prompt, query=False)

    @property
    def dimension(self) -> int:
        dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else None
        if dim is None:
            dim = self.model.get_sentence_embedding_dimension()
        if dim is None:
            raise ModelNotFoundError(f"embedding model {self.config.model!r} does not report its dimension")
        return int(dim)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def fingerprint(self) -> dict[str, str | int]:
        prompt = self.config.document_prompt
        return {
            "embedding_model": self.model_id,
            "dimension": self.dimension,
            "document_prompt": "(saved with the model)" if prompt is None else prompt,
        }


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_backend(backend: str, device: str) -> str:
    """``backend`` unless "auto": torch (see EmbeddingConfig.backend for why)."""
    if backend != "auto":
        return backend
    return "torch"


def resolve_dtype(dtype: str, device: str) -> str:
    """``dtype`` unless "auto": bfloat16 where the hardware computes it natively, else float32."""
    if dtype != "auto":
        return dtype
    if not device.startswith("cpu"):
        return "bfloat16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: do not guess
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))
