"""From retrieved hits to an Answer: the context budget, the language guard, citations, "not found".

``AnswerStream`` runs one answer: it fits the best hits into the prompt's token budget, streams
the LLM's text while holding back its first letters until their language is checked, retries
once with a stronger instruction when the language is wrong (then, if configured, has the LLM
translate), and at the end maps the ``[n]`` markers to the chunks they cite.
"""

from __future__ import annotations

import logging
import math
import re
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ingestion.chunker import trim_spans
from rag.config import GenerationConfig, Settings
from rag.errors import ConfigError, GenerationError, ModelNotFoundError
from rag.generator import (
    ChatStream,
    Generator,
    LLMClient,
    PromptSource,
    build_messages,
    format_source,
    translation_messages,
)
from rag.language import LANGUAGE_SCRIPT, LanguageIdentifier, dominant_language, script_counts, script_share
from rag.languages import not_found_message
from rag.types import Answer, Citation, CitedSentence, Hit, Usage

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_TOKENS = 3000  # when neither the config nor the server says
PROMPT_MARGIN_TOKENS = 64  # chat template tokens around the messages


# -- tokens and the context budget -----------------------------------------------------------


TokenCount = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """About 3 UTF-8 bytes per token: generous for English, about right for CJK, Thai, Hindi."""
    return math.ceil(len(text.encode("utf-8")) / 3)


def token_counter(settings: Settings) -> tuple[TokenCount, str]:
    """A token counter for ``llm.model`` and what it is: "local", "server" or "estimate"."""
    mode = settings.generation.tokenizer
    if mode in ("auto", "local"):
        try:
            return _local_counter(settings.llm.model), "local"
        except (ModelNotFoundError, OSError, ValueError) as e:
            if mode == "local":
                raise ConfigError(
                    f"generation.tokenizer is 'local' but the tokenizer of llm.model {settings.llm.model!r} cannot "
                    f"be loaded ({e}); point BABELRAG_LLM_MODEL at the model folder or use tokenizer 'server'"
                ) from e
    if mode in ("auto", "server"):
        counter = _server_counter(settings)
        try:
            counter("probe")
            return counter, "server"
        except GenerationError:
            if mode == "server":
                raise
    return estimate_tokens, "estimate"


def _local_counter(model: str) -> TokenCount:
    from transformers import AutoTokenizer

    from rag.models import resolve_model

    path = resolve_model(model, role="LLM", setting="BABELRAG_LLM_MODEL")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def _server_counter(settings: Settings) -> TokenCount:
    import httpx

    root = settings.llm.base_url.rstrip("/").removesuffix("/v1")

    def count(text: str) -> int:
        try:
            r = httpx.post(f"{root}/tokenize", json={"model": settings.llm.model, "prompt": text}, timeout=10)
            r.raise_for_status()
            return int(r.json()["count"])
        except (httpx.HTTPError, ValueError, KeyError) as e:
            raise GenerationError(
                f"the LLM server at {root} cannot count tokens (POST /tokenize: {e}); set generation.tokenizer "
                "to 'estimate' or 'local'"
            ) from e

    return count


@dataclass(frozen=True, slots=True)
class FittedSources:
    sources: list[PromptSource]
    hits: list[Hit]  # hits[i] is sources[i]'s chunk
    shown_chars: list[int | None]  # characters of a truncated chunk shown, else None
    dropped: int  # hits left out
    tokens: int


def fit_sources(hits: Sequence[Hit], budget: int, count: TokenCount) -> FittedSources:
    """The best hits, in rank order, whose text fits ``budget`` tokens.

    A hit that does not fit is left out and smaller ones after it may still fit; the first hit
    that does not fit whole, while nothing has been cut yet, is cut after its last sentence that
    fits, and the prompt says it is an excerpt. A chunk is never cut mid-sentence.
    """
    sources: list[PromptSource] = []
    kept: list[Hit] = []
    shown: list[int | None] = []
    used = 0
    cut_one = False
    for hit in hits:
        number = len(sources) + 1
        source = PromptSource(number, hit.chunk.text)
        cost = count(format_source(source) + "\n\n")
        if used + cost <= budget:
            sources.append(source)
            kept.append(hit)
            shown.append(None)
            used += cost
            continue
        if cut_one:
            continue
        text = hit.chunk.text
        best = None
        for _, end in sentence_spans(text):
            candidate = PromptSource(number, text[:end].rstrip(), truncated=True)
            c = count(format_source(candidate) + "\n\n")
            if used + c > budget:
                break
            best = (candidate, c, len(candidate.text))
        if best is not None and best[2] < len(text.rstrip()):
            cut_one = True
            sources.append(best[0])
            kept.append(hit)
            shown.append(best[2])
            used += best[1]
    return FittedSources(sources, kept, shown, dropped=len(hits) - len(kept), tokens=used)


def below_thresholds(hits: Sequence[Hit], config: GenerationConfig, *, reranked: bool) -> str | None:
    """Why ``hits`` cannot support an answer without asking the LLM, or None when they may."""
    if not hits:
        return "nothing was retrieved"
    best = max(h.retrieval_score for h in hits)
    if config.min_retrieval_score is not None and best < config.min_retrieval_score:
        return f"the best retrieval score {best:.3f} is below generation.min_retrieval_score"
    if reranked and config.min_rerank_score is not None and hits[0].score < config.min_rerank_score:
        return f"the best reranker score {hits[0].score:.3f} is below generation.min_rerank_score"
    return None


# -- sentences and citations -------------------------------------------------------------------

# A sentence ends at . ! ? and their CJK, Devanagari, Arabic and Urdu forms, with any closing
# quotes or brackets and any citation markers right after it, or at a line break.
_TERMINATORS = ".!?。！？।॥؟۔"
_SENTENCE_END = re.compile(
    rf"(?:[{re.escape(_TERMINATORS)}]+[\"'”’»)\]]*(?:\s*\[\d+\])*(?=\s|$)|[。！？](?:\[\d+\])*|\n+)"
)
# [1], [1, 2], [1-3], [Source 1], fullwidth ［１］ and 【１】, any script's digits
_MARKER = re.compile(
    r"\s?[\[【［]\s*(?:[^\W\d_]{1,12}\s*)?(\d{1,3}(?:\s*[,，、;]\s*\d{1,3}|\s*[-–]\s*\d{1,3})*)\s*[\]】］]"
)
_NUMBER = re.compile(r"\d{1,3}(?:\s*[-–]\s*\d{1,3})?")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``, whitespace excluded."""
    spans = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    return trim_spans(text, spans)


@dataclass(frozen=True, slots=True)
class MappedCitations:
    text: str  # markers normalised to [n], markers that cite nothing removed
    cited: frozenset[int]
    removed: list[str]
    sentences: list[CitedSentence]


def _ascii_int(digits: str) -> int:
    return int("".join(str(unicodedata.digit(ch)) for ch in digits if ch.isdigit()))


def map_citations(text: str, sources: int) -> MappedCitations:
    """Normalise the answer's source markers to ``[n]``, drop those that point at no source
    (logged), and list which sentence cites which sources."""
    removed: list[str] = []

    def replace(m: re.Match) -> str:
        numbers: list[int] = []
        for part in _NUMBER.findall(m.group(1)):
            values = [_ascii_int(p) for p in re.split(r"\s*[-–]\s*", part)]
            if len(values) == 2 and values[0] <= values[1] <= values[0] + 20:
                numbers.extend(range(values[0], values[1] + 1))
            else:
                numbers.extend(values)
        valid = [n for n in dict.fromkeys(numbers) if 1 <= n <= sources]
        invalid = [n for n in numbers if not 1 <= n <= sources]
        if invalid:
            removed.append(m.group(0).strip())
            log.info("answer cites %s, but %d sources were given; removed", m.group(0).strip(), sources)
        lead = " " if m.group(0)[0].isspace() and valid else ""
        return lead + "".join(f"[{n}]" for n in valid)

    clean = _MARKER.sub(replace, text)
    clean = re.sub(r"[ \t]+([.,;:!?])", r"\1", clean) if removed else clean
    cited: set[int] = set()
    sentences = []
    for s, e in sentence_spans(clean):
        found = (int(n) for n in re.findall(r"\[(\d{1,3})\]", clean[s:e]))
        numbers = tuple(dict.fromkeys(n for n in found if 1 <= n <= sources))
        cited.update(numbers)
        sentences.append(CitedSentence(text=clean[s:e], start=s, end=e, sources=numbers))
    return MappedCitations(clean, frozenset(cited), removed, sentences)


_NUMBER_TOKEN = re.compile(r"\d+(?:[.,'’ ]\d+)*")


def numbers_in(text: str) -> set[str]:
    """The numbers of ``text`` in ASCII digits without separators: "8,678" and "८६७८" are "8678"."""
    text = re.sub(r"\[\d{1,3}\]", " ", text)
    return {
        "".join(str(unicodedata.digit(ch)) for ch in m.group(0) if ch.isdigit()) for m in _NUMBER_TOKEN.finditer(text)
    }


def invents_numbers(answer: str, sources: Sequence[str], question: str) -> bool:
    """The answer states numbers, and none of them (other than the question's own) is in any source.

    Numbers are the one kind of fact that can be checked across languages and scripts without
    a model: a German answer from a Japanese source still says "90". An answer that cites no
    source and whose every number is in none of them was not taken from the knowledge base.
    """
    stated = numbers_in(answer) - numbers_in(question)
    if not stated:
        return False
    known = set().union(*(numbers_in(s) for s in sources)) if sources else set()
    return not (stated & known)


_NOT_FOUND = re.compile(r"^\W*not[\s_-]?found\b\W*", re.IGNORECASE)


def says_not_found(text: str) -> bool:
    """The model's sentinel for "the sources do not hold the answer" (possibly with stray markers),
    or the start of it alone ("NO", "NOT": small models stop early)."""
    stripped = text.strip()
    if len(stripped) <= 12 and not re.search(r"\[\d+\]", stripped) and _could_be_sentinel(stripped):
        return len(re.sub(r"[\W_]+", "", stripped)) >= 2
    rest = _NOT_FOUND.sub("", stripped, count=1) if _NOT_FOUND.match(stripped) else None
    return rest is not None and not re.search(r"\[\d+\]", rest) and len(rest) < 40


def _could_be_sentinel(held: str) -> bool:
    core = re.sub(r"[\W_]+", "", held).upper()
    return bool(core) and ("NOTFOUND".startswith(core) or core.startswith("NOTFOUND"))


def _has_content(text: str) -> bool:
    """A number, or at least 3 letters ("NO" alone answers nothing), besides the markers."""
    rest = _MARKER.sub(" ", text)
    return any(ch.isdigit() for ch in rest) or sum(ch.isalpha() for ch in rest) >= 3


def strip_sentinel(text: str) -> str:
    """An answer that also wrote the sentinel somewhere: the sentinel goes, the answer stays."""
    return re.sub(r"\s*\bNOT[_ ]FOUND\b\.?", "", text).strip()


# -- the answer stream -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnswerEvent:
    """``delta``: text to append. ``reset``: forget the text shown so far (``text`` says why);
    deltas with the replacement follow."""

    kind: Literal["delta", "reset"]
    text: str


@dataclass(slots=True)
class AnswerPlan:
    """Everything an AnswerStream needs, decided before the LLM is called."""

    question: str  # as the user asked it
    standalone_question: str | None  # chat: the rewritten follow-up that was retrieved for
    question_language: str | None
    target_language: str | None
    hits: list[Hit]
    fitted: FittedSources | None  # None: not found without asking the LLM
    model: str
    timings: dict[str, float] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    started: float = field(default_factory=time.perf_counter)


class AnswerStream:
    """Iterate for the answer's text pieces as they are written; ``hits`` (the sources, numbered
    from 1) are known before the first piece. ``events()`` also yields resets; ``answer()``
    gives the finished Answer, reading the rest first; ``cancel()`` stops the LLM.

    The first ``generation.language_check_chars`` letters are held back until their language is
    checked, so a wrong-language start is never shown.
    """

    def __init__(
        self,
        plan: AnswerPlan,
        *,
        generator: Generator,
        llm: LLMClient,
        language: LanguageIdentifier,
        config: GenerationConfig,
    ) -> None:
        self.plan = plan
        self.question = plan.question
        self.question_language = plan.question_language
        self.target_language = plan.target_language
        self.hits: list[Hit] = plan.fitted.hits if plan.fitted else []
        self._generator = generator
        self._llm = llm
        self._language = language
        self._config = config
        self._stream: ChatStream | None = None
        self._events: Iterator[AnswerEvent] | None = None
        self._shown: list[str] = []
        self._answer: Answer | None = None
        self._cancelled = False
        # the outcome, filled in by _run
        self._text = ""
        self._found = True
        self._attempts = 0
        self._translated = False

    # public -------------------------------------------------------------------------------

    def events(self) -> Iterator[AnswerEvent]:
        if self._events is None:
            self._events = self._run()
        for event in self._events:
            if event.kind == "reset":
                self._shown.clear()
            else:
                self._shown.append(event.text)
            yield event

    def __iter__(self) -> Iterator[str]:
        reset = False
        for event in self.events():
            if event.kind == "reset":
                reset = True
                continue
            yield ("\n\n" + event.text) if reset else event.text
            reset = False

    def cancel(self) -> None:
        """Stop generating (from any thread): the server stops, iteration ends, answer() has the text so far."""
        self._cancelled = True
        if self._stream is not None:
            self._stream.close()

    def answer(self) -> Answer:
        if self._answer is None:
            for _ in self.events():
                pass
            self._answer = self._finish()
        return self._answer

    # the run ------------------------------------------------------------------------------

    def _run(self) -> Iterator[AnswerEvent]:
        plan, config = self.plan, self._config
        t0 = time.perf_counter()
        if plan.fitted is None or not plan.fitted.sources:
            yield from self._not_found(reset=None)
            return
        target = plan.target_language
        wrong: str | None = None
        text = ""
        verdict: str | None = None
        for attempt in (1, 2):
            self._attempts = attempt
            last = attempt == 2
            self._stream = self._generator.stream(
                plan.standalone_question or plan.question, plan.fitted.sources, language=target,
                wrong_language=wrong, strict=attempt == 2,
            )  # fmt: skip
            if self._cancelled:
                self._stream.close()
            text, verdict, shown = "", None, False
            try:
                for piece in self._stream:
                    if "first_token" not in plan.timings:
                        plan.timings["first_token"] = time.perf_counter() - plan.started
                    text += piece
                    if verdict is None:
                        verdict = self._early_verdict(text, target)
                        if verdict == "ok":
                            shown = True
                            yield AnswerEvent("delta", text)
                        elif verdict == "wrong" and not last:
                            break  # stop paying for text in the wrong language
                    elif verdict == "ok":
                        yield AnswerEvent("delta", piece)
            finally:
                plan.usage = plan.usage + self._stream.usage
                if not shown or self._cancelled:
                    self._stream.close()
            if self._cancelled:
                break
            if verdict is None and not says_not_found(text):  # a short answer: judge all of it
                verdict = self._verdict(text, target)
            if verdict in ("wrong", "empty") and not last:
                wrong = self._detect(text)
                log.info("answer started in %s, not %s; asking again", wrong, target)
                self._stream.close()
                continue
            break
        plan.timings["generate"] = time.perf_counter() - t0
        if self._cancelled:
            self._text = text
            return
        if says_not_found(text) or not _has_content(text):
            yield from self._not_found(reset="the model found no answer in the sources" if shown else None)
            return
        text = strip_sentinel(text) if "NOT" in text else text
        sources = [source.text for source in plan.fitted.sources]
        if (
            config.check_numbers
            and not map_citations(text, len(sources)).cited
            and invents_numbers(text, sources, plan.standalone_question or plan.question)
        ):
            log.info("answer cites no source and states numbers none of them holds; not found: %r", text)
            yield from self._not_found(
                reset="the answer states numbers that are in none of the sources" if shown else None
            )
            return
        language = self._detect(text)
        if (
            config.verify_language
            and self._verdict(text, target) == "wrong"
            and config.on_wrong_language == "translate"
        ):
            t1 = time.perf_counter()
            reason = f"the answer was in {language}, not {target}: translated"
            translated = yield from self._stream_translation(text, target, reset=reason if shown else None)
            plan.timings["translate"] = time.perf_counter() - t1
            if translated is not None:
                self._translated = True
                self._text = translated
                return
        if not shown:
            yield AnswerEvent("delta", text)
        self._text = text

    def _early_verdict(self, held: str, target: str | None) -> str | None:
        """None: keep holding back; "ok": show it; "wrong": the language is not ``target``."""
        if _could_be_sentinel(held):
            return None
        if not self._config.verify_language or not target:
            return "ok"
        if sum(script_counts(_MARKER.sub(" ", held)).values()) < self._config.language_check_chars:
            return None
        return self._verdict(held, target)

    def _verdict(self, text: str, target: str | None) -> str:
        """ "empty" for markers alone ("[1] [2]"); text without letters ("308 [1]") has no
        language and is never in the wrong one."""
        if not _has_content(text):
            return "empty"
        if not self._config.verify_language or not target:
            return "ok"
        language = self._detect(text)
        if language in (None, target):
            return "ok"
        # a Thai answer that opens with a Latin-script name is still Thai
        counts = script_counts(_MARKER.sub(" ", text))
        own = LANGUAGE_SCRIPT.get(target, "latin")
        return "ok" if own != "latin" and script_share(target, counts) >= 0.3 else "wrong"

    def _detect(self, text: str) -> str | None:
        return dominant_language(self._language, _MARKER.sub(" ", text))

    def _stream_translation(self, text: str, target: str, *, reset: str | None) -> Iterator[AnswerEvent]:
        """The LLM's translation of ``text``, streamed once its start is seen to be in ``target``
        (after a ``reset`` event when the original was shown); returns it, or None (nothing shown)
        when it fails or comes back in another language."""
        self._stream = self._llm.stream_chat(translation_messages(text, target))
        translated, shown = "", False
        try:
            for piece in self._stream:
                translated += piece
                if shown:
                    yield AnswerEvent("delta", piece)
                    continue
                verdict = self._early_verdict(translated, target)
                if verdict == "ok":
                    shown = True
                    if reset:
                        yield AnswerEvent("reset", reset)
                    yield AnswerEvent("delta", translated.lstrip())
                elif verdict in ("wrong", "empty"):
                    break
        except GenerationError as e:
            if shown:
                raise
            log.warning("translating the answer into %s failed: %s", target, e)
            return None
        finally:
            self.plan.usage = self.plan.usage + self._stream.usage
            self._stream.close()
        translated = translated.strip()
        if not shown:
            if self._verdict(translated, target) != "ok":
                log.info(
                    "the translation into %s came back in %s; keeping the answer", target, self._detect(translated)
                )
                return None
            if reset:
                yield AnswerEvent("reset", reset)
            yield AnswerEvent("delta", translated)
        return translated

    def _translate(self, text: str, target: str) -> str | None:
        """``_stream_translation`` without the events."""
        gen = self._stream_translation(text, target, reset=None)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    def _not_found(self, *, reset: str | None) -> Iterator[AnswerEvent]:
        """Answer "not found" in the target language, after a ``reset`` when text was shown."""
        self._found = False
        self._text = self._not_found_text()
        if reset:
            yield AnswerEvent("reset", reset)
        yield AnswerEvent("delta", self._text)

    def _not_found_text(self) -> str:
        target = self.plan.target_language
        message = not_found_message(target)
        if message is not None:
            return message
        english = not_found_message("en") or ""
        if target and self._config.on_wrong_language == "translate":
            translated = self._translate(english, target)
            if translated:
                return translated
        return english

    def _finish(self) -> Answer:
        plan = self.plan
        hits = self.hits
        mapped = map_citations(self._text.strip(), len(hits) if self._found else 0)
        shown = plan.fitted.shown_chars if plan.fitted else []
        citations = [
            Citation(
                number=i, hit=hit, cited=self._found and i in mapped.cited, truncated=shown[i - 1] is not None,
                shown_chars=shown[i - 1],
            )
            for i, hit in enumerate(hits, 1)
        ]  # fmt: skip
        plan.timings["total"] = time.perf_counter() - plan.started
        return Answer(
            question=plan.question,
            text=mapped.text,
            language=self._detect(mapped.text),
            question_language=plan.question_language,
            citations=citations,
            model=plan.model,
            target_language=plan.target_language,
            standalone_question=plan.standalone_question,
            found=self._found,
            sentences=mapped.sentences,
            removed_markers=mapped.removed,
            language_attempts=max(self._attempts, 1),
            translated=self._translated,
            usage=plan.usage,
            timings=dict(plan.timings),
            dropped_sources=plan.fitted.dropped if plan.fitted else 0,
        )


__all__ = [
    "AnswerEvent",
    "AnswerPlan",
    "AnswerStream",
    "FittedSources",
    "build_messages",
    "estimate_tokens",
    "fit_sources",
    "map_citations",
    "sentence_spans",
    "token_counter",
]
