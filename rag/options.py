"""One shape for a query: what every front end builds and every ``Pipeline`` method takes.

``QueryOptions`` is what a caller may choose (each field None = the configured default);
``resolve`` checks it against ``Settings`` once and gives a ``ResolvedQuery`` with every value
decided. REST bodies, MCP tool arguments, the LangChain retriever's fields and the CLI's flags
are all this type's fields: a new option is added here, and to the front ends that show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypedDict, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rag.config import RerankerKind, Settings, validate_collection_name
from rag.errors import QueryError

MAX_TOP_K = 200
Where = dict[str, Any]


class QueryOptions(BaseModel):
    """Where to look, how many sources, how to rank them, which language to answer in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    collection: Annotated[
        str | None, Field(description="Knowledge base (collection) to search; default store.collection.")
    ] = None
    top_k: Annotated[
        int | None, Field(ge=1, le=MAX_TOP_K, description="How many sources; default retrieval.top_k.")
    ] = None
    where: Annotated[
        Where | None,
        Field(description='Filter on chunk metadata, e.g. {"language": "de"} or {"source": "/kb/leave.md"}.'),
    ] = None
    reranker: Annotated[
        RerankerKind | None, Field(description="none | cross-encoder | llm-listwise; default reranker.kind.")
    ] = None
    language: Annotated[
        str | None,
        Field(pattern=r"^[a-z]{2,3}$", description="ISO 639-1 answer language; default: the question's."),
    ] = None

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, v: str | None) -> str | None:
        return v if v is None else validate_collection_name(v)

    @classmethod
    def of(cls, options: QueryOptions | None = None, **fields: Any) -> QueryOptions:
        """``options`` with ``fields`` (those not None) put over it, validated; a bad value is a QueryError."""
        given = {k: v for k, v in fields.items() if v is not None}
        if options is not None and not given:
            return options
        base = options.model_dump(exclude_none=True) if options is not None else {}
        try:
            return cls(**{**base, **given})
        except ValidationError as e:
            raise QueryError(_explain(e)) from None

    def resolve(self, settings: Settings) -> ResolvedQuery:
        """Every value decided: the given ones, else the configured defaults."""
        top_k = self.top_k or settings.retrieval.top_k
        return ResolvedQuery(
            collection=self.collection or settings.store.collection,
            top_k=top_k,
            where=self.where,
            reranker=self.reranker or settings.reranker.kind,
            language=self.language or settings.generation.answer_language,
            candidates=max(top_k, settings.retrieval.candidates),
        )


class QueryFields(TypedDict, total=False):
    """``QueryOptions``'s fields as keyword arguments (``rag.ask(q, collection="kb", top_k=3)``)."""

    collection: str | None
    top_k: int | None
    where: Where | None
    reranker: RerankerKind | None
    language: str | None


@dataclass(frozen=True, slots=True)
class ResolvedQuery:
    collection: str
    top_k: int
    where: Where | None
    reranker: RerankerKind
    language: str | None  # the forced answer language; None: the question's
    candidates: int  # first-stage hits handed to the reranker (at least top_k)


_HINTS = {
    "top_k": f"a whole number from 1 to {MAX_TOP_K}",
    "reranker": " | ".join(get_args(RerankerKind)),
    "language": "an ISO 639-1 code such as 'de' or 'zh'",
    "where": 'a metadata filter such as {"language": "de"}',
    "collection": "a collection name of 3-512 letters, digits, '.', '_' or '-'",
}


def _explain(error: ValidationError) -> str:
    problems = []
    for e in error.errors():
        name = str(e["loc"][0]) if e["loc"] else "?"
        if e["type"] == "extra_forbidden":
            problems.append(f"unknown query option {name!r}; the options are {', '.join(QueryOptions.model_fields)}")
        elif e["type"] == "value_error":  # a validator's own message says it all
            problems.append(str(e["msg"]).removeprefix("Value error, "))
        else:
            problems.append(f"{name} must be {_HINTS.get(name, e['msg'])}, got {e.get('input')!r}")
    return "; ".join(problems)
