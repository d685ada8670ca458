"""From retrieved hits to an Answer: the language guard, the "not found" checks, citations.

``AnswerStream`` runs one answer: it streams the LLM's text while holding back its first letters
until their language is checked, retries once with a stronger instruction when the language is
wrong (then, if configured, has the LLM translate), answers "not found" when the model says so
or states numbers no source holds, and at the end maps the ``[n]`` markers to the chunks they cite.

The logic is written once, as a generator that *asks* for LLM text (``_Open``, ``_PULL``) and
yields ``AnswerEvent``s; two small drivers serve it: ``events()`` with the blocking client, and
``aevents()`` (``async for``) with the async client, so the async API never parks a thread on
a stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from collections.abc import Generator as Gen
from dataclasses import dataclass, field
from typing import Any, Literal

from rag.budget import FittedSources
from rag.citations import (
    LEAK,
    MARKER,
    CopyCheck,
    could_be_sentinel,
    has_content,
    invents_numbers,
    map_citations,
    says_not_found,
    strip_sentinel,
)
from rag.config import GenerationConfig
from rag.errors import GenerationError, QueryError
from rag.generator import INSTRUCTIONS, Generator, Message, translation_messages
from rag.language import LanguageIdentifier, dominant_language
from rag.languages import not_found_message
from rag.llm import AsyncChatStream, ChatStream, LLMClient
from rag.metrics import Metrics
from rag.text import LANGUAGE_SCRIPT, script_counts, script_share
from rag.trace import Trace
from rag.types import Answer, Citation, Hit

log = logging.getLogger(__name__)

# While an answer streams, it is checked for copies (``CopyCheck``) each time it has grown by this
# many characters: a copy shows at most this much before it is cut, for ~1 ms per check.
COPY_CHECK_CHARS = 24


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
    trace: Trace = field(default_factory=Trace)


# -- what the answer logic asks of its driver ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Open:
    """Start an LLM stream (closing the one before): the answer (``generate``: the Generator's
    arguments) or a plain chat (``messages``: the translation)."""

    generate: dict[str, Any] | None = None
    messages: list[Message] | None = None


class _Pull:
    """The next piece of the open stream's text, or None when it ended (or was cancelled)."""


_PULL = _Pull()
_Run = Gen["AnswerEvent | _Open | _Pull", "str | None", Any]


def _quietly(run: _Run) -> _Run:
    """``run``'s LLM requests passed on, its events dropped; returns what it returns."""
    reply: str | None = None
    error: BaseException | None = None
    while True:
        try:
            command = run.throw(error) if error is not None else run.send(reply)
        except StopIteration as done:
            return done.value
        reply = error = None
        if isinstance(command, AnswerEvent):
            continue
        try:
            reply = yield command
        except Exception as e:  # noqa: BLE001 - handed to ``run``, which decides
            error = e


class AnswerStream:
    """Iterate (``for`` or ``async for``) for the answer's text pieces as they are written;
    ``hits`` (the sources, numbered from 1) are known before the first piece. ``events()`` /
    ``aevents()`` also yield resets; ``answer()`` / ``await aanswer()`` give the finished Answer,
    reading the rest first; ``cancel()`` stops the LLM. ``trace`` holds the timings and tokens.

    The first ``generation.language_check_chars`` letters are held back until their language is
    checked, so a wrong-language start is never shown. A stream is read once, sync or async.
    """

    def __init__(
        self,
        plan: AnswerPlan,
        *,
        generator: Generator,
        llm: LLMClient,
        language: LanguageIdentifier,
        config: GenerationConfig,
        metrics: Metrics | None = None,
    ) -> None:
        self.plan = plan
        self.trace = plan.trace
        self.question = plan.question
        self.question_language = plan.question_language
        self.target_language = plan.target_language
        self.hits: list[Hit] = plan.fitted.hits if plan.fitted else []
        self._generator = generator
        self._llm = llm
        self._language = language
        self._config = config
        self._metrics = metrics
        self._stream: ChatStream | AsyncChatStream | None = None
        self._events: Iterator[AnswerEvent] | None = None
        self._aevents: AsyncIterator[AnswerEvent] | None = None
        self._shown: list[str] = []
        self._answer: Answer | None = None
        self._cancelled = False
        # the outcome, filled in by _run
        self._text = ""
        self._found = True
        self._attempts = 0
        self._translated = False
        self._withheld: list[str] = []

    # public: sync ---------------------------------------------------------------------------

    def events(self) -> Iterator[AnswerEvent]:
        if self._events is None:
            self._one_mode(sync=True)
            self._events = self._drive()
        for event in self._events:
            self._note(event)
            yield event

    def __iter__(self) -> Iterator[str]:
        reset = False
        for event in self.events():
            if event.kind == "reset":
                reset = True
                continue
            yield ("\n\n" + event.text) if reset else event.text
            reset = False

    def answer(self) -> Answer:
        if self._answer is None:
            for _ in self.events():
                pass
            self._answer = self._finish()
        return self._answer

    # public: async --------------------------------------------------------------------------

    async def aevents(self) -> AsyncIterator[AnswerEvent]:
        if self._aevents is None:
            self._one_mode(sync=False)
            self._aevents = self._adrive()
        async for event in self._aevents:
            self._note(event)
            yield event

    async def __aiter__(self) -> AsyncIterator[str]:
        reset = False
        async for event in self.aevents():
            if event.kind == "reset":
                reset = True
                continue
            yield ("\n\n" + event.text) if reset else event.text
            reset = False

    async def aanswer(self) -> Answer:
        if self._answer is None:
            async for _ in self.aevents():
                pass
            self._answer = self._finish()
        return self._answer

    def cancel(self) -> None:
        """Stop generating (from any thread): the server stops, iteration ends, the answer has the text so far."""
        self._cancelled = True
        if self._stream is not None:
            self._stream.close()

    def _one_mode(self, *, sync: bool) -> None:
        if (self._aevents if sync else self._events) is not None:
            used, asked = ("async", "sync") if sync else ("sync", "async")
            raise QueryError(f"this answer stream is being read {used}; it cannot also be read {asked}")

    def _note(self, event: AnswerEvent) -> None:
        if event.kind == "reset":
            self._shown.clear()
        else:
            self._shown.append(event.text)

    # the drivers: the same run, served by the blocking or the async client --------------------

    def _drive(self) -> Iterator[AnswerEvent]:
        run = self._run()
        reply: str | None = None
        error: Exception | None = None
        pieces: Iterator[str] = iter(())
        try:
            while True:
                try:
                    command = run.throw(error) if error is not None else run.send(reply)
                except StopIteration:
                    return
                reply = error = None
                if isinstance(command, AnswerEvent):
                    yield command
                elif isinstance(command, _Open):
                    self._close_stream()
                    stream = (
                        self._generator.stream(**command.generate)
                        if command.generate is not None
                        else self._llm.stream_chat(command.messages or [])
                    )
                    self._stream = stream
                    if self._cancelled:
                        stream.close()
                    pieces = iter(stream)
                else:
                    try:
                        reply = next(pieces, None)
                    except Exception as e:  # noqa: BLE001 - the run decides (it may fall back)
                        error = e
        finally:
            run.close()
            self._close_stream()

    async def _adrive(self) -> AsyncIterator[AnswerEvent]:
        run = self._run()
        reply: str | None = None
        error: Exception | None = None
        pieces: AsyncIterator[str] | None = None
        try:
            while True:
                try:
                    command = run.throw(error) if error is not None else run.send(reply)
                except StopIteration:
                    return
                reply = error = None
                if isinstance(command, AnswerEvent):
                    yield command
                elif isinstance(command, _Open):
                    await self._aclose_stream()
                    stream = (
                        self._generator.astream(**command.generate)
                        if command.generate is not None
                        else self._llm.astream_chat(command.messages or [])
                    )
                    self._stream = stream
                    if self._cancelled:
                        stream.close()
                    pieces = aiter(stream)
                else:
                    try:
                        reply = await anext(pieces, None) if pieces is not None else None
                    except Exception as e:  # noqa: BLE001 - the run decides (it may fall back)
                        error = e
        finally:
            run.close()
            if pieces is not None and hasattr(pieces, "aclose"):
                await pieces.aclose()
            await self._aclose_stream()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
            self.trace.add(stream.usage)

    async def _aclose_stream(self) -> None:
        stream, self._stream = self._stream, None
        if isinstance(stream, AsyncChatStream):
            await stream.aclose()
        if stream is not None:
            self.trace.add(stream.usage)

    # the run --------------------------------------------------------------------------------

    def _run(self) -> _Run:
        plan, config = self.plan, self._config
        t0 = time.perf_counter()
        if plan.fitted is None or not plan.fitted.sources:
            yield from self._not_found(reset=None)
            return
        target = plan.target_language
        sources = [source.text for source in plan.fitted.sources]
        copies = CopyCheck(sources, INSTRUCTIONS)
        wrong: str | None = None
        text = ""
        verdict: str | None = None
        copied: str | None = None
        shown = False
        for attempt in (1, 2):
            self._attempts = attempt
            last = attempt == 2
            yield _Open(generate={
                "question": plan.standalone_question or plan.question, "sources": plan.fitted.sources,
                "language": target, "wrong_language": wrong, "strict": attempt == 2,
            })  # fmt: skip
            text, verdict, copied, shown, checked = "", None, None, False, 0
            while True:
                piece = yield _PULL
                if piece is None:
                    break
                self.trace.mark("first_token")
                text += piece
                if len(text) - checked >= COPY_CHECK_CHARS:
                    checked = len(text)
                    if (copied := copies(text)) is not None:
                        break  # before this piece is shown; stop paying for a copy
                if verdict is None:
                    verdict = self._early_verdict(text, target)
                    if verdict == "ok":
                        shown = True
                        yield AnswerEvent("delta", text)
                    elif verdict == "wrong" and not last:
                        break  # stop paying for text in the wrong language
                elif verdict == "ok":
                    yield AnswerEvent("delta", piece)
            if self._cancelled:
                break
            if verdict is None and not says_not_found(text):  # a short answer: judge all of it
                verdict = self._verdict(text, target)
            if verdict in ("wrong", "empty") and not last:
                wrong = self._detect(text)
                self._withheld.append(
                    f"the answer was in {wrong}, not {target}" if wrong else "no answer, markers alone"
                )
                log.info("answer started in %s, not %s; asking again", wrong, target)
                continue
            copied = None if says_not_found(text) else copied or copies(text)
            if copied is not None and not last:
                self._withheld.append(copied)
                log.info("%s; asking again: %r", copied, text)
                if shown:
                    yield AnswerEvent("reset", f"{copied}; asking again")
                continue
            break
        self.trace.record("generate", time.perf_counter() - t0)
        if self._cancelled:
            self._text = text
            return
        if says_not_found(text) or not has_content(strip_sentinel(text)):
            yield from self._not_found(reset="the model found no answer in the sources" if shown else None)
            return
        text = strip_sentinel(text) if "NOT" in text else text
        language = self._detect(text)
        translate = (
            config.verify_language
            and self._verdict(text, target) == "wrong"
            and config.on_wrong_language == "translate"
        )
        if copied is not None:
            self._withheld.append(copied)
            # a copied source may go out translated (the translator reads it as data); a copy in the
            # target language has no other form, and a leak is one in any language
            if not translate or copied == LEAK:
                log.info("%s again; not found: %r", copied, text)
                yield from self._not_found(reset=copied if shown else None)
                return
        if (
            config.check_numbers
            and not map_citations(text, len(sources)).cited
            and invents_numbers(text, sources, plan.standalone_question or plan.question)
        ):
            reason = "the answer states numbers that are in none of the sources"
            self._withheld.append(reason)
            log.info("answer cites no source and states numbers none of them holds; not found: %r", text)
            yield from self._not_found(reset=reason if shown else None)
            return
        if translate:
            # the translator is told the text is data: a copied source's instruction is translated, not obeyed
            t1 = time.perf_counter()
            reason = f"the answer was in {language}, not {target}: translated"
            translated = yield from self._stream_translation(text, target, reset=reason if shown else None)
            self.trace.record("translate", time.perf_counter() - t1)
            if translated is not None:
                self._translated = True
                self._text = translated
                return
            # never the wrong-language answer as it is: it may be a source copied whole, carrying an
            # instruction its translator then obeyed
            reason = f"the answer was in {language}, not {target}, and its translation failed"
            self._withheld.append(reason)
            yield from self._not_found(reset=reason if shown else None)
            return
        if not shown:
            yield AnswerEvent("delta", text)
        self._text = text

    def _early_verdict(self, held: str, target: str | None) -> str | None:
        """None: keep holding back; "ok": show it; "wrong": the language is not ``target``."""
        if could_be_sentinel(held):
            return None
        if not self._config.verify_language or not target:
            return "ok"
        if sum(script_counts(MARKER.sub(" ", held)).values()) < self._config.language_check_chars:
            return None
        return self._verdict(held, target)

    def _verdict(self, text: str, target: str | None) -> str:
        """ "empty" for markers alone ("[1] [2]"); text without letters ("308 [1]") has no
        language and is never in the wrong one."""
        if not has_content(text):
            return "empty"
        if not self._config.verify_language or not target:
            return "ok"
        language = self._detect(text)
        if language in (None, target):
            return "ok"
        # a Thai answer that opens with a Latin-script name is still Thai
        counts = script_counts(MARKER.sub(" ", text))
        own = LANGUAGE_SCRIPT.get(target, "latin")
        return "ok" if own != "latin" and script_share(target, counts) >= 0.3 else "wrong"

    def _detect(self, text: str) -> str | None:
        return dominant_language(self._language, MARKER.sub(" ", text))

    def _stream_translation(self, text: str, target: str, *, reset: str | None) -> _Run:
        """The LLM's translation of ``text``, streamed once its start is seen to be in ``target``
        (after a ``reset`` event when the original was shown); returns it, or None (nothing shown)
        when it fails or comes back in another language."""
        yield _Open(messages=translation_messages(text, target))
        translated, shown = "", False
        try:
            while True:
                piece = yield _PULL
                if piece is None:
                    break
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

    def _not_found(self, *, reset: str | None) -> _Run:
        """Answer "not found" in the target language, after a ``reset`` when text was shown."""
        self._found = False
        self._text = yield from self._not_found_text()
        if reset:
            yield AnswerEvent("reset", reset)
        yield AnswerEvent("delta", self._text)

    def _not_found_text(self) -> _Run:
        target = self.plan.target_language
        message = not_found_message(target)
        if message is not None:
            return message
        english = not_found_message("en") or ""
        if target and self._config.on_wrong_language == "translate":
            translated = yield from _quietly(self._stream_translation(english, target, reset=None))
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
        timings = self.trace.finish()
        answer = Answer(
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
            withheld=list(self._withheld),
            usage=self.trace.usage,
            timings=timings,
            dropped_sources=plan.fitted.dropped if plan.fitted else 0,
        )
        if self._metrics is not None:
            self._metrics.observe_answer(answer, cancelled=self._cancelled)
        return answer


__all__ = ["AnswerEvent", "AnswerPlan", "AnswerStream"]
