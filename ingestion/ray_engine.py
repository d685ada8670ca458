"""The Ray engine of an ingestion job: files are loaded, chunked and embedded on a Ray cluster.

It replaces what ``job._prepared`` and the embedder do for the local engine, and nothing else:
this process lists the files and hashes them against the manifest (unchanged files never reach
the cluster), and every store write goes through the same ``job._Writer``, so the manifest,
incremental and crash-safety rules are the local engine's code. The pipeline, one row per file:

    from_items(new and changed paths)
    -> map_batches(_load_and_chunk)                     Ray tasks: read, parse, chunk, language id
    -> map_batches(_Embed, compute=ActorPoolStrategy)   actors: embed the chunks of a batch of files
    -> iter_rows() in this process                      streamed into _Writer as they come

A file's chunks and their vectors travel in its row, so they reach the writer with its document;
a file that cannot be parsed travels as a ``_Failed`` row with its reason (``_prepare`` catches
every error, as for the local engine). Rows come in no particular order.

Fault tolerance is Ray Data's: a task whose worker process dies is retried, and an embedding
actor that dies is restarted and its batch retried (for callable classes map_batches defaults to
max_restarts=-1, max_task_retries=-1). A retried batch yields the same rows: chunk ids hash the
source, the span and the text.

Unlike the local engine, which embeds only chunks whose ids are not stored yet, this one embeds
every chunk of a new or changed file: the workers do not read the store.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ingestion.chunker import Chunker, SentenceChunker, tokenizer_spans
from ingestion.job import _file_hash, _Item, _Parsed, _prepare, _Unchanged
from ingestion.loader import Loader
from rag.config import ChunkingConfig, EmbeddingConfig, IngestionConfig, LanguageConfig, Settings
from rag.embedder import Embedder, SentenceTransformerEmbedder
from rag.errors import BabelRAGError, ConfigError, IngestionError, ModelNotFoundError
from rag.models import resolve_model
from rag.store import ManifestEntry

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'babelrag[ray]'"


def prepared_on_ray(
    files: Sequence[Path],
    manifest: dict[str, ManifestEntry],
    embedder: Embedder,
    chunker: Chunker,
    config: IngestionConfig,
    loaders: Sequence[Loader],
    settings: Settings | None,
) -> Iterator[_Item]:
    """Each file as ``_Unchanged`` (decided here), or as ``_Failed`` or ``_Parsed`` with its
    embeddings (from the cluster). ``embedder`` and ``chunker`` are the job's, which the collection's
    index fingerprint comes from: the workers' must be the same, built from ``settings``."""
    ray = _import_ray()
    workers = _workers(embedder, chunker, config, loaders, settings)
    changed = []
    for path in files:
        if _unchanged(path, manifest.get(str(path))):
            yield _Unchanged(str(path))
        else:
            changed.append(str(path))
    if not changed:
        return
    with _connected(ray, config.ray_address):
        try:
            for row in _pipeline(ray, changed, workers, config).iter_rows():
                yield pickle.loads(row["item"])
        except Exception as e:  # Ray wraps a worker's error; ours says what to do on its own
            raise _cause(ray, e) from e


def _import_ray() -> ModuleType:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ConfigError(
            f"ingestion.engine is 'ray' but Ray is not installed ({e}); {INSTALL_HINT}, "
            "or use the local engine (--engine local)"
        ) from e
    return ray


def _unchanged(path: Path, entry: ManifestEntry | None) -> bool:
    """Whether ``path`` still holds what its finished manifest entry records (the local engine's
    rule). A file that cannot be read is not: a worker tries it and reports why it fails."""
    if entry is None or not entry.done:
        return False
    try:
        return entry.content_hash == _file_hash(path)
    except OSError:
        return False


# -- what the workers build their stages from --------------------------------------------


@dataclass(frozen=True, slots=True)
class _Workers:
    """Settings sections the workers need, small enough to ship with every task."""

    ingestion: IngestionConfig
    chunking: ChunkingConfig
    language: LanguageConfig
    embedding: EmbeddingConfig  # its model resolved here: a folder where this machine has one
    loaders: tuple[Loader, ...]

    @property
    def chunker_key(self) -> str:
        parts = [self.embedding.model, self.chunking.model_dump(mode="json"), self.language.model_dump(mode="json")]
        return json.dumps(parts, sort_keys=True)


def _workers(
    embedder: Embedder,
    chunker: Chunker,
    config: IngestionConfig,
    loaders: Sequence[Loader],
    settings: Settings | None,
) -> _Workers:
    if settings is None:
        raise ConfigError(
            "the ray engine builds its workers from the settings; pass settings= to ingest_files (Pipeline.ingest does)"
        )
    expected = SentenceChunker(_no_tokens, settings.chunking).fingerprint
    if chunker.fingerprint != expected or embedder.model_id != settings.embedding.model:
        raise ConfigError(
            f"the ray engine's workers chunk with {expected} and embed with {settings.embedding.model!r} "
            f"(from the settings), but this job was given a chunker with {chunker.fingerprint} and "
            f"embedding model {embedder.model_id!r}; build both from the same settings (as Pipeline.ingest "
            "does) or use the local engine"
        )
    # Resolved once here, so that workers load a folder instead of asking the Hugging Face Hub.
    model = resolve_model(settings.embedding.model, role="embedding", setting="BABELRAG_EMBEDDING_MODEL")
    return _Workers(
        ingestion=config,
        chunking=settings.chunking,
        language=settings.language,
        embedding=settings.embedding.model_copy(update={"model": model}),
        loaders=tuple(loaders),
    )


def _no_tokens(text: str) -> list[tuple[int, int]]:
    return []


# -- the cluster and the pipeline ---------------------------------------------------------


@contextmanager
def _connected(ray: ModuleType, address: str | None) -> Iterator[None]:
    """Ray, connected: to the cluster this process already ray.init-ed, else to ``address`` (None
    starts a local cluster), which is then shut down after the job."""
    if ray.is_initialized():
        yield
        return
    try:
        # The dashboard is a web server per cluster, and a local job cluster lives for one job.
        ray.init(address=address, **({"include_dashboard": False} if address is None else {}))
    except ConnectionError as e:
        raise ConfigError(
            f"cannot reach a Ray cluster at ingestion.ray_address={address!r} ({e}); start one there "
            "(ray start --head), or leave ray_address unset to start a local cluster for the job"
        ) from e
    try:
        yield
    finally:
        ray.shutdown()


def _pipeline(ray: ModuleType, paths: list[str], workers: _Workers, config: IngestionConfig) -> Any:
    """The Ray Data pipeline that turns ``paths`` into rows of pickled _Parsed/_Failed items."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = config.ray_embed_actors or max(gpus, 1)
    if gpus and actors > gpus:
        log.warning("ingestion.ray_embed_actors=%d, but the cluster has %d GPUs: using %d actors", actors, gpus, gpus)
        actors = gpus
    # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU; embedding.device is for this process.
    embedding = workers.embedding.model_copy(update={"device": "cuda" if gpus else "cpu"})
    # A worker node may have a model folder but no network; a hub id is downloaded on each node.
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} if Path(embedding.model).is_absolute() else {}
    runtime_env = {"env_vars": offline}
    per_batch = config.ray_batch_files
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.print_on_execution_start, context.raise_original_map_exception
    # A dataset copies the context it is made in. The job reports its own progress, and a worker's
    # error (a model folder missing on a node) must reach _cause as itself, not as Ray's summary.
    context.enable_progress_bars = context.print_on_execution_start = False
    context.raise_original_map_exception = True
    try:
        items = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=math.ceil(len(paths) / per_batch))
        parsed = items.map_batches(
            _load_and_chunk, batch_size=None, fn_kwargs={"workers": workers}, num_cpus=1, runtime_env=runtime_env
        )
        # Blocks of per_batch files for the actors. It also keeps Ray Data from fusing the parse
        # tasks into the actors, as it does for a task map before an actor map with the same
        # resources: parsing would then run in the actor processes, one batch at a time, between
        # embeddings, and idle the CPUs the actors do not hold.
        parsed = parsed.repartition(target_num_rows_per_block=per_batch)
        return parsed.map_batches(
            _Embed,
            batch_size=per_batch,
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"config": embedding},
            num_cpus=config.ray_embed_cpus,
            num_gpus=1 if gpus else None,
            runtime_env=runtime_env,
        )
    finally:
        context.enable_progress_bars, context.print_on_execution_start, context.raise_original_map_exception = saved


def _cause(ray: ModuleType, error: Exception) -> Exception:
    """The error a worker raised, out of Ray's wrappers: a BabelRAG error as it is (its message
    says what to do), anything else as an IngestionError naming it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, BabelRAGError) and not isinstance(seen, ray.exceptions.RayError):
            return seen
        inner = getattr(seen, "cause", None) or seen.__cause__  # RayTaskError keeps the worker's in .cause
        if inner is None:
            break
        seen = inner
    return IngestionError(
        f"the Ray pipeline failed: {type(seen).__name__}: {(str(seen).splitlines() or [''])[0]}; "
        "the worker's traceback is in the log above and in the cluster's logs (/tmp/ray/session_latest/logs)"
    )


# -- in the workers ----------------------------------------------------------------------

_CHUNKERS: dict[str, Chunker] = {}  # per worker process: Ray reuses one for many tasks


def _load_and_chunk(batch: dict[str, np.ndarray], workers: _Workers) -> dict[str, np.ndarray]:
    """Ray task: each file of ``batch`` as a _Parsed or _Failed item, pickled."""
    if workers.chunker_key not in _CHUNKERS:
        from rag.language import language_identifier

        tokenizer = _tokenizer(workers.embedding.model)
        detect = language_identifier(workers.language).detect
        _CHUNKERS[workers.chunker_key] = SentenceChunker(tokenizer_spans(tokenizer), workers.chunking, detect)
    chunker = _CHUNKERS[workers.chunker_key]
    return _rows([_prepare(Path(p), None, chunker, workers.ingestion, workers.loaders) for p in batch["path"]])


class _Embed:
    """Ray actor: embeds the chunks of a batch of files with the document prompt.

    The model loads with the first batch, not in ``__init__``: Ray Data restarts an actor whose
    process dies in a batch and retries the batch, but fails the job for one that dies while it
    is being created.
    """

    def __init__(self, config: EmbeddingConfig) -> None:
        self.embedder = SentenceTransformerEmbedder(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [pickle.loads(b) for b in batch["item"]]
        parsed = [i for i in items if isinstance(i, _Parsed)]
        texts = [c.embedding_text for p in parsed for c in p.chunks]
        if not texts:
            return _rows(items)
        _check_model_here(self.embedder.config.model)
        vectors = self.embedder.embed_documents(texts)
        ends = np.cumsum([len(p.chunks) for p in parsed])
        rows = {id(p): vectors[end - len(p.chunks) : end] for p, end in zip(parsed, ends, strict=True)}
        return _rows([replace(i, embeddings=rows[id(i)]) if isinstance(i, _Parsed) else i for i in items])


def _rows(items: list[_Item]) -> dict[str, np.ndarray]:
    out = np.empty(len(items), dtype=object)  # not np.array(list): equal-length bytes would become a 2-D array
    out[:] = [pickle.dumps(i, protocol=pickle.HIGHEST_PROTOCOL) for i in items]
    return {"item": out}


def _tokenizer(model: str) -> Any:
    """The tokenizer of ``model``'s Transformer module, as SentenceTransformer loads it, without the
    weights: chunks must be the local engine's, and a task worker need not hold the model."""
    _check_model_here(model)
    from transformers import AutoTokenizer

    if not Path(model).is_absolute():  # a hub id, where downloads are allowed
        return AutoTokenizer.from_pretrained(model)
    folder = Path(model)
    modules = folder / "modules.json"
    transformer = ""
    if modules.is_file():
        listed = json.loads(modules.read_text(encoding="utf-8"))
        transformer = next((m["path"] for m in listed if m["type"].endswith(".Transformer")), "")
    return AutoTokenizer.from_pretrained(folder / transformer)


def _check_model_here(model: str) -> None:
    if Path(model).is_absolute() and not Path(model).is_dir():
        raise ModelNotFoundError(
            f"embedding model folder {model} is not on Ray node {platform.node()}; every node needs the "
            "model at the same path (or set embedding.model to a hub id and let the nodes download it)"
        )
