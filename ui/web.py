"""The Gradio chat web UI. It calls only the public Python API (``rag.Pipeline``).

Chat (streamed answers, the detected language, follow-ups) beside a sources panel (file, page,
language, score, the supporting sentence highlighted; a click on a marker shows its source);
knowledge bases (pick or name a collection, drop files to ingest with a progress bar and a
summary, list and delete documents); settings (reranker, top-k, answer language).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: this may run offline

import gradio as gr

from rag import BabelRAGError, CollectionNotFoundError, JobProgress, Pipeline, QueryError, QueryOptions
from rag.config import RerankerKind, validate_collection_name
from ui import render
from ui.uploads import UploadBatch, too_large

log = logging.getLogger(__name__)

RERANKERS = get_args(RerankerKind)
RERANKER_LABELS = {"none": "None (first stage only)", "cross-encoder": "Cross-encoder", "llm-listwise": "LLM listwise"}

CSS = """
.babel-sources { display: flex; flex-direction: column; gap: 10px; max-height: 72vh; overflow-y: auto; }
.babel-src { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px;
  background: var(--background-fill-secondary); scroll-margin: 8px; }
.babel-src.babel-cited { border-left: 4px solid var(--color-accent); }
.babel-src.babel-active { outline: 3px solid var(--color-accent); background: var(--background-fill-primary); }
.babel-src-head { font-size: 0.85em; display: flex; flex-wrap: wrap; gap: 4px 6px; align-items: baseline; }
.babel-num { font-weight: 700; }
.babel-file { font-weight: 600; }
.babel-badge { background: var(--color-accent); color: white; border-radius: 4px; padding: 0 5px; }
.babel-muted, .babel-section { color: var(--body-text-color-subdued); }
.babel-section { font-size: 0.8em; margin-top: 2px; }
.babel-passage { white-space: pre-wrap; font-size: 0.9em; margin-top: 6px; max-height: 16em; overflow-y: auto;
  unicode-bidi: plaintext; }
.babel-passage[dir=rtl] { text-align: right; }
.babel-unseen { opacity: 0.45; }
mark.babel-evidence { background: #ffe58a; color: inherit; padding: 0 1px; border-radius: 2px; }
.babel-msg[dir=rtl] { text-align: right; }
a.babel-cite { text-decoration: none; font-weight: 600; cursor: pointer; padding: 0 1px; }
.babel-error { border: 1px solid #d33; background: #fdecea; color: #611a15; border-radius: 6px; padding: 8px 12px; }
.babel-report ul { margin: 4px 0 0 18px; }
.babel-failed { color: #a11; }
.babel-empty { color: var(--body-text-color-subdued); }
"""

# Clicking a marker [n] (href #babel-src-TURN-N) in an answer shows that turn's sources and brings source n into view.
JS = r"""
() => {
  window.babelCitations = true;
  document.addEventListener('click', (event) => {
    const link = event.target.closest('a.babel-cite');
    if (!link) return;
    event.preventDefault();
    event.stopPropagation();
    // the chatbot's sanitizer keeps class and href, not data-* attributes
    const found = (link.getAttribute('href') || '').match(/babel-src-(\d+)-(\d+)/);
    if (!found) return;
    const turn = found[1], n = found[2];
    document.querySelectorAll('.babel-turn').forEach((s) => { s.hidden = s.dataset.turn !== turn; });
    document.querySelectorAll('.babel-src.babel-active').forEach((c) => c.classList.remove('babel-active'));
    const card = document.getElementById(`babel-src-${turn}-${n}`);
    if (card) {
      card.classList.add('babel-active');
      card.scrollIntoView({block: 'nearest'});
    }
  }, true);
}
"""


@dataclass
class Turn:
    """One question and answer of the conversation, as the pipeline (not the chatbot) sees it."""

    question: str
    answer: str = ""
    sources: str = ""  # the sources panel's HTML for this turn


@dataclass
class Session:
    turns: list[Turn] = field(default_factory=list)

    def sources_panel(self) -> str:
        return render.sources_panel([t.sources for t in self.turns])

    def history(self) -> list[dict[str, str]]:
        out = []
        for t in self.turns:
            if t.answer:
                out += [{"role": "user", "content": t.question}, {"role": "assistant", "content": t.answer}]
        return out


class WebUI:
    """Handlers of the UI's events; ``blocks()`` lays them out. Holds no model: the pipeline does."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.settings = pipeline.settings
        self.upload_dir = Path(self.settings.server.upload_dir)

    # -- chat ------------------------------------------------------------------------------

    def respond(
        self, message: str, chatbot: list, session: Session | None, collection: str, reranker: str, top_k: float,
        answer_language: str,
    ) -> Iterator[tuple]:  # fmt: skip
        """Stream one answer: (chatbot, textbox, status, sources, error, session) after each piece."""
        session = session or Session()
        chatbot = list(chatbot or [])
        message = (message or "").strip()
        if not message:
            yield chatbot, "", gr.skip(), gr.skip(), render.notice("Type a question first."), session
            return
        turn = Turn(message)
        history = session.history()
        chatbot.append({"role": "user", "content": render.user_message(message)})
        yield chatbot, "", "Searching the knowledge base…", gr.skip(), "", session
        stream = None
        text = ""
        try:
            options = QueryOptions.of(
                collection=collection or None, top_k=int(top_k), reranker=reranker or None,
                language=None if answer_language in ("", "auto", None) else answer_language,
            )  # fmt: skip
            stream = self.pipeline.chat_stream(history, message, options)
            session.turns.append(turn)
            t = len(session.turns) - 1
            turn.sources = render.source_cards(t, stream.hits)
            panel = session.sources_panel()
            status = render.status_line(stream.question_language, stream.target_language, phase="writing…")
            chatbot.append({"role": "assistant", "content": render.streaming_answer("", stream.target_language)})
            yield chatbot, "", status, panel, "", session
            text = ""
            for event in stream.events():
                text = text + event.text if event.kind == "delta" else ""  # reset: a replacement follows
                chatbot[-1] = {"role": "assistant", "content": render.streaming_answer(text, stream.target_language)}
                yield chatbot, "", gr.skip(), gr.skip(), "", session
            answer = stream.answer()
            evidence = self.pipeline.evidence(answer) if answer.found else {}
            turn.answer = answer.text
            turn.sources = render.source_cards(t, answer=answer, evidence=evidence)
            chatbot[-1] = {"role": "assistant", "content": render.final_answer(answer, t)}
            status = render.status_line(answer.question_language, answer.target_language, answer)
            yield chatbot, "", status, session.sources_panel(), "", session
        except Exception as error:
            if not isinstance(error, BabelRAGError):
                log.exception("chat failed")
            if not turn.answer:  # the failed turn goes; its question goes back into the box, to send again
                session.turns = [t for t in session.turns if t is not turn]
                if text and stream is not None:  # what arrived stays in the chat, marked as cut off
                    chatbot[-1] = {"role": "assistant", "content": render.cut_off_answer(text, stream.target_language)}
                else:
                    while chatbot and chatbot[-1]["role"] == "assistant":
                        chatbot.pop()
                    if chatbot and chatbot[-1]["role"] == "user":
                        chatbot.pop()
            panel = session.sources_panel()  # without the failed turn's
            yield chatbot, message, "", panel, render.error_box(error), session
        finally:
            if stream is not None and not turn.answer:
                stream.cancel()

    def clear(self) -> tuple:
        return [], "", render.sources_panel([]), "", Session()

    # -- knowledge bases -------------------------------------------------------------------

    def collection_choices(self) -> list[tuple[str, str]]:
        try:
            infos = self.pipeline.collections()
        except BabelRAGError:
            log.exception("listing collections failed")
            return []
        return [(f"{c.name} ({c.documents if c.documents is not None else '?'} files)", c.name) for c in infos]

    def refresh_collections(self, current: str | None) -> Any:
        choices = self.collection_choices()
        names = [name for _, name in choices]
        # the configured collection if it exists, else the first there is (a new name stays until used)
        value = current if current in names or not names else names[0]
        return gr.update(choices=choices, value=value)

    def documents(self, collection: str | None) -> tuple[Any, Any, str]:
        """(table, delete picker, error) for ``collection``."""
        if not collection:
            return [], gr.update(choices=[], value=None), ""
        try:
            entries = self.pipeline.documents(collection)
        except CollectionNotFoundError:
            note = f"New knowledge base {render.esc(collection)!r}: drop files and press Ingest to create it."
            return [], gr.update(choices=[], value=None), f'<div class="babel-report" role="status">{note}</div>'
        except BabelRAGError as error:
            return [], gr.update(choices=[], value=None), render.error_box(error)
        picks = [(Path(e.source).name, e.source) for e in entries]
        return render.documents_table(entries), gr.update(choices=picks, value=None), ""

    def upload(
        self,
        files: list[str] | None,
        collection: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple:
        """Copy the dropped files into the collection's upload folder and ingest them there:
        (report, collections picker, documents table, delete picker, cleared upload area).
        ``progress`` (Gradio's progress bar) counts files done; outside an event it does nothing."""
        try:
            if not files:
                raise QueryError("no files to ingest: drop files on the upload area first")
            name = self._collection_name(collection)
            for f in files:
                if reason := too_large(Path(f).name, Path(f).stat().st_size, self.settings.server.max_upload_mb):
                    raise QueryError(f"{reason}; nothing of this batch was ingested")
            batch = UploadBatch(self.upload_dir / name, [(Path(f).name, Path(f)) for f in files])
            progress((0, len(batch.paths)), desc="Ingesting", unit="files")

            def tick(p: JobProgress) -> None:
                desc = f"Ingested {batch.names.get(p.current, Path(p.current).name)}" if p.current else "Ingesting"
                progress((p.files_done, p.files_total), desc=desc, unit="files")

            report = batch.ingest(self.pipeline, name, tick)
            html = render.ingest_report(report, batch.names)
        except Exception as error:
            if not isinstance(error, BabelRAGError):
                log.exception("upload failed")
            html, name = render.error_box(error), collection
        table, picker, _ = self.documents(name)
        return html, self.refresh_collections(name), table, picker, None

    def delete(self, source: str | None, collection: str | None) -> tuple:
        """Delete one document (and its uploaded copy): (message, table, picker, collections picker)."""
        try:
            if not source:
                raise QueryError("pick a document to delete first")
            name = self._collection_name(collection)
            removed = self.pipeline.delete_document(source, name)
            path = Path(source)
            if path.is_file() and self.upload_dir.resolve() in path.resolve().parents:
                path.unlink()
            message = (
                f'<div class="babel-report" role="status">Deleted {render.esc(path.name)} ({removed} chunks).</div>'
            )
        except Exception as error:
            if not isinstance(error, BabelRAGError):
                log.exception("delete failed")
            message, name = render.error_box(error), collection
        table, picker, _ = self.documents(name)
        return message, table, picker, self.refresh_collections(name)

    def _collection_name(self, collection: str | None) -> str:
        name = (collection or "").strip()
        if not name:
            raise QueryError("no collection chosen: pick one, or type a new name such as 'handbook'")
        try:
            return validate_collection_name(name)
        except ValueError as error:
            raise QueryError(str(error)) from None

    # -- layout ----------------------------------------------------------------------------

    def blocks(self) -> gr.Blocks:
        s = self.settings
        with gr.Blocks(title="BabelRAG", analytics_enabled=False) as demo:
            session = gr.State(Session())
            with gr.Row(equal_height=True):
                gr.Markdown("## BabelRAG · ask your documents in any language", elem_id="babel-title")
                collection = gr.Dropdown(
                    choices=[], value=s.store.collection, allow_custom_value=True, label="Knowledge base",
                    info="Pick a collection, or type a new name to upload into", elem_id="babel-collection", scale=0,
                    min_width=280,
                )  # fmt: skip
            with gr.Tabs():
                with gr.Tab("Chat", id="chat"):
                    with gr.Row():
                        with gr.Column(scale=3):
                            chatbot = gr.Chatbot(
                                elem_id="babel-chat", height=520, buttons=["copy"], feedback_options=None, show_label=False,
                                placeholder="Ask a question in any language: the answer comes in yours, with "
                                "numbered citations of the documents it used.",
                            )  # fmt: skip
                            status = gr.Markdown("", elem_id="babel-status")
                            error = gr.HTML("", elem_id="babel-error")
                            question = gr.Textbox(
                                placeholder="Ask in any language… (Enter sends, Shift+Enter is a new line)",
                                show_label=False, elem_id="babel-question", autofocus=True, max_lines=6,
                            )  # fmt: skip
                            with gr.Row():
                                send = gr.Button("Send", variant="primary", elem_id="babel-send")
                                stop = gr.Button("Stop", elem_id="babel-stop")
                                new = gr.Button("New chat", elem_id="babel-new")
                        with gr.Column(scale=2):
                            gr.Markdown("### Sources")
                            sources = gr.HTML(render.sources_panel([]), elem_id="babel-sources")
                    with gr.Accordion("Settings", open=False, elem_id="babel-settings"), gr.Row():
                        reranker = gr.Radio(
                            [(RERANKER_LABELS.get(k, k), k) for k in RERANKERS], value=s.reranker.kind,
                            label="Reranker", elem_id="babel-reranker",
                        )  # fmt: skip
                        top_k = gr.Slider(
                            1, 20, value=s.retrieval.top_k, step=1, label="Sources (top-k)", elem_id="babel-top-k"
                        )
                        answer_language = gr.Dropdown(
                            render.language_choices(), value=s.generation.answer_language or "auto",
                            label="Answer language", elem_id="babel-answer-language",
                        )  # fmt: skip
                with gr.Tab("Knowledge bases", id="kb"), gr.Row():
                    with gr.Column(scale=2):
                        files = gr.File(
                            file_count="multiple", label="Drop files here (txt, md, html, pdf, docx)",
                            elem_id="babel-upload", height=160,
                        )  # fmt: skip
                        ingest = gr.Button("Ingest into the knowledge base", variant="primary", elem_id="babel-ingest")
                        report = gr.HTML("", elem_id="babel-report", min_height=90)
                    with gr.Column(scale=3):
                        documents = gr.Dataframe(
                            headers=render.DOCUMENT_COLUMNS, value=[], interactive=False, label="Documents",
                            elem_id="babel-documents", wrap=True,
                        )  # fmt: skip
                        with gr.Row():
                            doomed = gr.Dropdown(choices=[], label="Document", elem_id="babel-doc-pick", scale=3)
                            delete = gr.Button("Delete document", variant="stop", elem_id="babel-delete", scale=1)
                        deleted = gr.HTML("", elem_id="babel-deleted")

            chat_inputs = [question, chatbot, session, collection, reranker, top_k, answer_language]
            chat_outputs = [chatbot, question, status, sources, error, session]
            sent = send.click(self.respond, chat_inputs, chat_outputs)
            submitted = question.submit(self.respond, chat_inputs, chat_outputs)
            stop.click(None, cancels=[sent, submitted])
            new.click(self.clear, None, [chatbot, status, sources, error, session], cancels=[sent, submitted])

            demo.load(self.refresh_collections, collection, collection).then(
                self.documents, collection, [documents, doomed, deleted]
            )
            collection.change(self.documents, collection, [documents, doomed, deleted])
            # One ingestion job or deletion at a time (chats go on meanwhile, server.concurrency at once).
            ingest.click(
                self.upload, [files, collection], [report, collection, documents, doomed, files],
                concurrency_limit=1, concurrency_id="writes", show_progress_on=[report],
            )  # fmt: skip
            delete.click(
                self.delete, [doomed, collection], [deleted, documents, doomed, collection],
                concurrency_limit=1, concurrency_id="writes",
            )  # fmt: skip
        return demo
