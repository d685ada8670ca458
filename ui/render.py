"""HTML and Markdown for the web UI: answers with clickable citation markers, the sources panel,
ingestion reports and errors. Pure functions of the public API's types, so they are unit-tested
without a browser. Every text that comes from a document, the LLM or the user is escaped here.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from rag import Answer, BabelRAGError, Citation, CollectionNotFoundError, Evidence, Hit, IngestReport, ManifestEntry
from rag.languages import LANGUAGES, english_name, native_name, text_direction

_MARKER = re.compile(r"\[(\d{1,3})\]")


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def language_label(code: str | None) -> str:
    """'Deutsch (de)'; '?' when unknown."""
    if not code:
        return "?"
    native = native_name(code)
    return f"{native} ({code})" if native != code else code


def language_choices() -> list[tuple[str, str]]:
    """The answer-language picker: automatic first, then every language with a native instruction."""
    named = sorted(LANGUAGES, key=english_name)
    return [("Automatic: the question's language", "auto")] + [
        (f"{english_name(c)} · {native_name(c)} ({c})", c) for c in named
    ]


def _markdown_text(text: str) -> str:
    # The chatbot renders Markdown (lists, bold) but no HTML from the model or the user.
    return html.escape(text, quote=False)


def _block(body: str, direction: str, language: str | None, classes: str) -> str:
    # A blank line after the opening tag lets Markdown render inside the HTML block.
    lang = f' lang="{esc(language)}"' if language else ""
    return f'<div class="{classes}" dir="{direction}"{lang}>\n\n{body}\n\n</div>'


def user_message(text: str) -> str:
    return _block(_markdown_text(text), "auto", None, "babel-msg babel-user")


def streaming_answer(text: str, language: str | None) -> str:
    """The answer while it is being written: plain markers, a cursor."""
    return _block(_markdown_text(text) + " ▍", text_direction(language), language, "babel-msg babel-answer")


CUT_OFF = "Answer cut off: the rest did not arrive (see the message below)."


def cut_off_answer(text: str, language: str | None) -> str:
    """An answer whose stream broke off: the text that arrived, marked as incomplete."""
    body = f"{_markdown_text(text)} …\n\n*{esc(CUT_OFF)}*"
    return _block(body, text_direction(language), language, "babel-msg babel-answer babel-cut-off")


def final_answer(answer: Answer, turn: int) -> str:
    """The finished answer; each ``[n]`` is a link that shows source n of this turn in the panel."""
    numbers = {c.number for c in answer.citations}

    def link(m: re.Match[str]) -> str:
        n = int(m.group(1))
        if n not in numbers:
            return m.group(0)
        return f'<a class="babel-cite" href="#babel-src-{turn}-{n}">[{n}]</a>'

    body = _MARKER.sub(link, _markdown_text(answer.text))
    classes = "babel-msg babel-answer babel-done" + ("" if answer.found else " babel-not-found")
    return _block(body, text_direction(answer.language or answer.target_language), answer.language, classes)


def status_line(
    question_language: str | None, target: str | None, answer: Answer | None = None, *, phase: str = ""
) -> str:
    """What the UI says under the chat: detected language, answer language, what happened."""
    parts = [f"Question language: **{esc(language_label(question_language))}**"]
    if target:
        parts.append(f"answer in **{esc(language_label(target))}**")
    if answer is not None:
        cited = [f"[{c.number}]" for c in answer.citations if c.cited]
        if not answer.found:
            parts.append("not found in the knowledge base")
        elif cited:
            parts.append("cites " + " ".join(cited))
        else:
            parts.append("cites no source")
        if answer.withheld:  # why the model's own text did not go out (the first reason; a retry followed)
            parts.append(f"asked again: {esc(answer.withheld[0])}")
        if answer.translated:
            parts.append("translated by the LLM")
        if answer.standalone_question and answer.standalone_question != answer.question:
            parts.append(f"understood as: *{esc(answer.standalone_question)}*")
        total = answer.timings.get("total")
        if total is not None:
            parts.append(f"{total:.1f} s")
    if phase:
        parts.append(phase)
    return " · ".join(parts)


def sources_panel(turns: Sequence[str]) -> str:
    """All turns' source lists; only the last is shown until a citation marker of another is clicked."""
    if not turns:
        return '<div class="babel-sources babel-empty">Sources of the answer appear here.</div>'
    sections = []
    for t, body in enumerate(turns):
        hidden = "" if t == len(turns) - 1 else " hidden"
        sections.append(f'<section class="babel-turn" data-turn="{t}"{hidden}>{body}</section>')
    return '<div class="babel-sources">' + "".join(sections) + "</div>"


def source_cards(
    turn: int,
    hits: Sequence[Hit] | None = None,
    *,
    answer: Answer | None = None,
    evidence: Mapping[int, Evidence] | None = None,
) -> str:
    """The numbered sources of one turn: while streaming from ``hits``, then from ``answer``."""
    if answer is not None:
        items: list[tuple[int, Hit, Citation | None]] = [(c.number, c.hit, c) for c in answer.citations]
    else:
        items = [(i, h, None) for i, h in enumerate(hits or [], start=1)]
    if not items:
        return '<p class="babel-empty">No sources were retrieved.</p>'
    evidence = evidence or {}
    return "".join(_card(turn, n, hit, citation, evidence.get(n)) for n, hit, citation in items)


def _card(turn: int, n: int, hit: Hit, citation: Citation | None, evidence: Evidence | None) -> str:
    chunk = hit.chunk
    shown = len(chunk.text) if citation is None or citation.shown_chars is None else citation.shown_chars
    spans = list(evidence.spans) if evidence else []
    passage = _highlight(chunk.text[:shown], spans)
    if shown < len(chunk.text):
        passage += f'<span class="babel-unseen" title="not shown to the LLM">{esc(chunk.text[shown:])}</span>'
    meta = [f'<span class="babel-file">{esc(chunk.file_name)}</span>']
    if chunk.page is not None:
        meta.append(f'<span class="babel-page">page {chunk.page}</span>')
    meta.append(f'<span class="babel-lang">{esc(language_label(chunk.language))}</span>')
    meta.append(f'<span class="babel-score" title="first stage {hit.retrieval_score:.3f}">score {hit.score:.3f}</span>')
    if citation is not None:
        meta.append(
            '<span class="babel-badge">cited</span>' if citation.cited else '<span class="babel-muted">not cited</span>'
        )
    section = chunk.section or chunk.title
    heading = f'<div class="babel-section">{esc(section)}</div>' if section else ""
    cited = " babel-cited" if citation is not None and citation.cited else ""
    return (
        f'<div class="babel-src{cited}" id="babel-src-{turn}-{n}" data-n="{n}">'
        f'<div class="babel-src-head"><span class="babel-num">[{n}]</span> {" · ".join(meta)}</div>{heading}'
        f'<div class="babel-passage" dir="{text_direction(chunk.language)}" lang="{esc(chunk.language or "")}">'
        f"{passage}</div></div>"
    )


def _highlight(text: str, spans: Sequence[tuple[int, int]]) -> str:
    out, at = [], 0
    for start, end in sorted(spans):
        start, end = max(start, at), min(end, len(text))
        if start >= end:
            continue
        out.append(esc(text[at:start]))
        out.append(f'<mark class="babel-evidence">{esc(text[start:end])}</mark>')
        at = end
    out.append(esc(text[at:]))
    return "".join(out)


def ingest_report(report: IngestReport, uploaded: Mapping[str, str] | None = None) -> str:
    """The result of an upload: added / updated / unchanged / failed with reasons."""
    names = uploaded or {}

    def name(path: str) -> str:
        return esc(names.get(path, Path(path).name))

    counts = [
        ("added", len(report.added)),
        ("updated", len(report.updated)),
        ("unchanged", len(report.unchanged)),
        ("failed", len(report.failed)),
    ]
    summary = " · ".join(f'<span class="babel-count-{k}">{v} {k}</span>' for k, v in counts)
    head = (
        f"<b>{esc(report.collection)}</b>: {summary} · {report.chunks_written} chunks written in {report.seconds:.1f} s"
    )
    lines = [f'<div class="babel-report" role="status"><p>{head}</p><ul>']
    for label, paths in (("added", report.added), ("updated", report.updated), ("unchanged", report.unchanged)):
        lines += [f'<li class="babel-{label}">{name(p)}: {label}</li>' for p in paths]

    def reason(issue) -> str:  # the upload folder's path means nothing to the user: name the file
        return esc(issue.reason.replace(issue.path, names.get(issue.path, Path(issue.path).name)))

    lines += [f'<li class="babel-failed">{name(i.path)}: failed: {reason(i)}</li>' for i in report.failed]
    lines += [f'<li class="babel-warning">{name(i.path)}: {reason(i)}</li>' for i in report.warnings]
    lines.append("</ul></div>")
    return "".join(lines)


def documents_table(entries: Sequence[ManifestEntry]) -> list[list[object]]:
    return [
        [
            Path(e.source).name,
            language_label(e.language),
            e.title or "",
            e.pages or "",
            len(e.chunk_ids),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e.updated_at)) if e.updated_at else "",
            "" if e.done else "incomplete: ingest again",
        ]
        for e in entries
    ]


DOCUMENT_COLUMNS = ["File", "Language", "Title", "Pages", "Chunks", "Ingested", "State"]


def error_box(error: BaseException) -> str:
    """A readable message, never a stack trace: BabelRAG's errors say what to do; others are named."""
    if isinstance(error, CollectionNotFoundError):
        text = f"{error}. Or here: open Knowledge bases, drop files and press Ingest."
    elif isinstance(error, BabelRAGError):
        text = str(error)
    else:
        text = f"Unexpected {type(error).__name__}: {error}. The server log has the details."
    return notice(text)


def notice(text: str) -> str:
    """A message for the user, shown like an error (role=alert)."""
    return f'<div class="babel-error" role="alert">{esc(text)}</div>'
