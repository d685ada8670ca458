"""`babelrag doctor`: can this setup ingest and answer? It checks what the other commands use, built
the way they build it (a Pipeline from the same settings): the config, the installed packages,
the models (loadable, their prompts, the chunk size they read), the store (mode, lock, version,
the collection's embedding model) and the LLM server (health, model, context length).

Each check yields a Finding: what it found and, for a problem, what to do. A "fail" stops
ingestion or answers; a "warn" is worth a look. The checks run in order and each stands alone:
one that fails does not hide the next.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Any, Literal

from rag.budget import context_budget
from rag.config import Settings, load_settings, unknown_env_settings, user_config_path
from rag.errors import BabelRAGError, ConfigError, GenerationError, QueryError, StoreLockedError
from rag.language import dominant_language
from rag.llm import estimate_tokens
from rag.llm_server import server_info
from rag.locks import read_lock
from rag.pipeline import Pipeline

Status = Literal["ok", "warn", "fail"]

# Shown with their versions; babelrag's own requirements on them are checked.
PACKAGES = (
    "babelrag", "torch", "sentence-transformers", "transformers", "chromadb", "openai", "fastapi", "gradio", "mcp",
    "prometheus-client", "pydantic",
)  # fmt: skip
# The language identifier must tell these apart: three scripts, and two languages of one.
LANGUAGE_SAMPLES = {
    "de": "Wie viele Urlaubstage haben die Mitarbeitenden im Jahr?",
    "es": "¿Cuántos días de vacaciones tienen los empleados al año?",
    "ja": "従業員の年間の有給休暇は何日ですか？",
    "ar": "كم عدد أيام الإجازة السنوية للموظفين؟",
}


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # config, packages, embedding, prompts, chunking, language, reranker, store, collection, llm
    status: Status
    detail: str  # what was found
    fix: str | None = None  # what to do, for a warn or a fail

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diagnose(config: Path | None = None, **overrides: Any) -> Iterator[Finding]:
    """Every check, in order, for the settings ``load_settings(config, **overrides)`` gives."""
    try:
        settings = load_settings(config, **overrides)
    except ConfigError as e:
        yield Finding(
            "config", "fail", str(e),
            "correct the setting named above, in the config file or its BABELRAG_<SECTION>_<FIELD> variable "
            "(configs/default.yaml lists every setting)",
        )  # fmt: skip
        yield from check_packages()
        return
    yield from check_config(config, settings)
    yield from check_packages()
    with Pipeline(settings) as pipeline:
        yield from check_models(pipeline)
        yield from check_store(pipeline)
        yield from check_llm(settings)


def check_config(path: Path | None, settings: Settings) -> Iterator[Finding]:
    user_file = user_config_path()
    files = [str(path)] if path else []
    files += [f"the user's {user_file}"] if user_file.is_file() else []
    shown = " over ".join(files) or "no config file (defaults)"
    yield Finding("config", "ok", f"{shown}, with the environment's BABELRAG_* settings")
    server = settings.server
    if server.token is None and server.host not in ("127.0.0.1", "localhost", "::1"):
        yield Finding(
            "config", "warn", f"server.host is {server.host} and server.token is not set: `babelrag serve` is open to "
            "anyone who reaches it", "set BABELRAG_SERVER_TOKEN (and BABELRAG_SERVER_READ_TOKEN for read-only clients)",
        )  # fmt: skip
    for name, meant in unknown_env_settings():
        yield Finding(
            "config", "warn", f"{name} is set but is no setting, so it is ignored",
            f"did you mean {meant}? Rename it (settings are BABELRAG_<SECTION>_<FIELD>)",
        )  # fmt: skip


def check_packages() -> Iterator[Finding]:
    from packaging.requirements import Requirement

    found = [f"python {platform.python_version()}"]
    for name in PACKAGES:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} missing")
    yield Finding("packages", "ok", ", ".join(found))
    for line in requires("babelrag") or []:
        requirement = Requirement(line)
        if requirement.marker is not None:  # an extra's (babelrag[ray], ...): optional
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            yield Finding("packages", "fail", f"{requirement.name} is not installed", f"pip install '{requirement}'")
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            yield Finding(
                "packages", "fail", f"{requirement.name} {installed} is installed; BabelRAG needs {requirement}",
                f"pip install '{requirement}'",
            )  # fmt: skip


def check_models(pipeline: Pipeline) -> Iterator[Finding]:
    s = pipeline.settings
    embedder = pipeline.embedder
    try:
        embedder.warm_up()
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        yield Finding(
            "embedding", "fail", _one_line(e),
            "point embedding.model (BABELRAG_EMBEDDING_MODEL) at a local sentence-transformers folder, "
            "e.g. multilingual-e5-small as shared/models/provision.sh builds it",
        )  # fmt: skip
    else:
        yield Finding(
            "embedding", "ok",
            f"{s.embedding.model}: {embedder.dimension} dimensions, reads {embedder.max_tokens} tokens, "
            f"{embedder.backend} {embedder.dtype} on {s.embedding.device}",
        )  # fmt: skip
        yield from _check_prompts(pipeline)
        try:
            pipeline._check_chunk_budget()  # the check every ingestion job starts with
            yield Finding("chunking", "ok", f"chunks of {s.chunking.max_tokens} tokens fit the embedding model")
        except ConfigError as e:
            yield Finding("chunking", "fail", str(e), "lower chunking.max_tokens (BABELRAG_CHUNKING_MAX_TOKENS)")
    yield from _check_language(pipeline)
    yield from _check_reranker(pipeline)


def _check_prompts(pipeline: Pipeline) -> Iterator[Finding]:
    """The configured query/passage prompts against those saved with the model: E5 reads "query: "
    and "passage: ", bge-m3 none, and a wrong or missing one costs retrieval quality silently."""
    config = pipeline.settings.embedding
    saved: Mapping[str, str] = getattr(pipeline.embedder.model, "prompts", None) or {}
    mismatched = []
    for role, setting, given in (("query", "query_prompt", config.query_prompt),
                                 ("document", "document_prompt", config.document_prompt)):  # fmt: skip
        own = saved.get(role)
        if given is not None and own is not None and given != own:
            mismatched.append(f"embedding.{setting} is {given!r} but the model was saved with {own!r}")
    shown = f"query {config.query_prompt!r}, document {config.document_prompt!r}"
    if mismatched:
        yield Finding(
            "prompts", "warn", "; ".join(mismatched),
            "use the model's own prompts (set the setting to null) unless its card says otherwise; a collection "
            "must be rebuilt (--reindex) after its document prompt changes",
        )  # fmt: skip
    elif not saved:
        yield Finding("prompts", "ok", f"{shown} (the model saves none: they must be those its card asks for)")
    else:
        yield Finding("prompts", "ok", f"{shown}, as saved with the model")


def _check_language(pipeline: Pipeline) -> Iterator[Finding]:
    detector = pipeline.settings.language.detector
    try:
        got = {lang: dominant_language(pipeline.language, text) for lang, text in LANGUAGE_SAMPLES.items()}
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        yield Finding("language", "fail", _one_line(e), f"reinstall the {detector} detector's package, or set "
                      "language.detector to the other one (fasttext, lingua)")  # fmt: skip
        return
    wrong = {lang: found for lang, found in got.items() if found != lang}
    if wrong:
        yield Finding(
            "language", "warn",
            f"{detector} took " + ", ".join(f"a {lang} sample for {found}" for lang, found in wrong.items()),
            "check language.languages (a language left out cannot be detected) or try language.detector lingua",
        )  # fmt: skip
    else:
        yield Finding("language", "ok", f"{detector}: {', '.join(got)} samples detected as such")


def _check_reranker(pipeline: Pipeline) -> Iterator[Finding]:
    kind = pipeline.settings.reranker.kind
    if kind != "cross-encoder":
        yield Finding("reranker", "ok", "none" if kind == "none" else f"{kind}, through the LLM server")
        return
    model = pipeline.settings.reranker.model
    try:
        pipeline.reranker(kind).warm_up()  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        yield Finding("reranker", "fail", _one_line(e), "point reranker.model (BABELRAG_RERANKER_MODEL) at a local "
                      "cross-encoder folder, or set reranker.kind none")  # fmt: skip
        return
    yield Finding("reranker", "ok", f"cross-encoder {model}")


def check_store(pipeline: Pipeline) -> Iterator[Finding]:
    import chromadb

    s = pipeline.settings.store
    store = pipeline.store
    try:
        store.warm_up()
    except StoreLockedError as e:
        yield Finding("store", "fail", f"embedded Chroma at {s.path} is locked: {_holder(e.holder)}", _unlock(s.path,
                      e.holder))  # fmt: skip
        return
    except BabelRAGError as e:
        yield Finding("store", "fail", _one_line(e), "start the Chroma server (`chroma run --path DIR --port PORT`), "
                      "or correct store.url (BABELRAG_STORE_URL); unset it for the embedded store")  # fmt: skip
        return
    client_version = chromadb.__version__
    if store.embedded:
        where = f"embedded Chroma at {s.path} (chromadb {client_version}), held by no other process"
    else:
        served = store.client.get_version()
        where = f"{store.location} (server {served}, client {client_version})"
        holder = read_lock(s.path) if not s.url else {}
        if holder:
            where += f", announced by {_holder(holder)}"
        if served.split(".")[0] != client_version.split(".")[0]:
            yield Finding(
                "store", "fail", f"{where}: the server and the client differ in major version",
                f"pip install 'chromadb=={served}' (or run a server of version {client_version})",
            )  # fmt: skip
            return
    try:
        collections = {c.name: c for c in pipeline.collections()}
    except BabelRAGError as e:
        yield Finding("store", "fail", f"{where}: {_one_line(e)}", "check the store's log; `babelrag collections` "
                      "shows the same error")  # fmt: skip
        return
    yield Finding("store", "ok", f"{where}; {len(collections)} collection(s)")
    yield from _check_collection(pipeline, collections)


def _check_collection(pipeline: Pipeline, collections: Mapping[str, Any]) -> Iterator[Finding]:
    name = pipeline.settings.store.collection
    info = collections.get(name)
    if info is None:
        yield Finding("collection", "warn", f"collection {name!r} (store.collection) does not exist yet",
                      f"babelrag ingest PATH -c {name}")  # fmt: skip
        return
    try:
        expected = pipeline.embedder.fingerprint
    except Exception:  # noqa: BLE001 - the model did not load: the embedding finding says why
        yield Finding("collection", "ok", f"{name!r}: {info.count} chunks, {info.documents} documents")
        return
    differ = {k: (info.fingerprint.get(k), v) for k, v in expected.items() if info.fingerprint.get(k) not in (None, v)}
    if differ:
        what = "; ".join(f"{k} {built!r} (now {now!r})" for k, (built, now) in differ.items())
        yield Finding(
            "collection", "fail", f"collection {name!r} was built with {what}: its vectors and the queries' differ",
            f"rebuild it: babelrag ingest PATH -c {name} --reindex; or set the embedding settings back",
        )  # fmt: skip
        return
    yield Finding("collection", "ok", f"{name!r}: {info.count} chunks, {info.documents} documents, built with "
                  f"{info.embedding_model}")  # fmt: skip


def check_llm(settings: Settings) -> Iterator[Finding]:
    llm = settings.llm
    start = (
        "start it with `babelrag llm serve --detach` (vLLM), or point llm.base_url (BABELRAG_LLM_BASE_URL) at a "
        "running OpenAI-compatible server"
    )
    try:
        info = server_info(llm.base_url)
    except GenerationError as e:
        yield Finding("llm", "fail", _one_line(e), start)
        return
    if not info.healthy:
        yield Finding("llm", "fail", f"the LLM server at {info.base_url} answers but is not healthy (GET /health or "
                      "/v1/models failed)", f"read its log and restart it; or {start}")  # fmt: skip
        return
    if llm.model not in info.models:
        served = ", ".join(info.models) or "none"
        yield Finding(
            "llm", "fail", f"{info.base_url} does not serve llm.model {llm.model!r} (it serves {served})",
            f"set BABELRAG_LLM_MODEL to one of {served}, or serve {llm.model!r}",
        )  # fmt: skip
        return
    length = info.max_model_len.get(llm.model)
    served = f"{info.base_url} serves {llm.model!r}" + (f" (vLLM {info.version})" if info.version else "")
    if length is None:
        yield Finding("llm", "ok", f"{served}; context length not reported: sources get "
                      f"{settings.generation.context_tokens or 3000} tokens")  # fmt: skip
        return
    try:
        budget = context_budget(
            LANGUAGE_SAMPLES["de"], "de", estimate_tokens, config=settings.generation, max_tokens=llm.max_tokens,
            context=length,
        )  # fmt: skip
    except QueryError:
        budget = 0
    if budget < settings.chunking.max_tokens:
        yield Finding(
            "llm", "fail",
            f"{served} with a context of {length} tokens; llm.max_tokens {llm.max_tokens} and the instructions leave "
            f"{max(budget, 0)} for sources, less than one chunk ({settings.chunking.max_tokens} tokens)",
            "lower llm.max_tokens, or serve the model with a longer context (vllm.max_model_len)",
        )  # fmt: skip
        return
    yield Finding("llm", "ok", f"{served}; context {length} tokens: {llm.max_tokens} for the answer, about {budget} "
                  "for sources")  # fmt: skip


def _holder(holder: Mapping[str, Any]) -> str:
    if not holder:
        return "another process"
    what = f"pid {holder.get('pid')} on {holder.get('host')} (`{holder.get('command')}`)"
    return what + (f", serving {holder['serve_url']}" if holder.get("serve_url") else "")


def _unlock(path: Path, holder: Mapping[str, Any]) -> str:
    serving = holder.get("serve_url")
    handoff = f"`babelrag ingest` hands its jobs to {serving} by itself, and {serving}/v1 answers queries; "
    return (
        f"{handoff if serving else ''}to use the store from several processes, serve it: `babelrag serve --chroma` (or "
        f"`chroma run --path {path}` and store.url); or stop pid {holder.get('pid', '?')}"
    )


def _one_line(error: BaseException) -> str:
    """What went wrong, on one line. A BabelRAGError says "what; what to do": the Finding's fix
    says the latter for this setup, so only the former is kept."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split("; ")[0] if isinstance(error, BabelRAGError) else text
