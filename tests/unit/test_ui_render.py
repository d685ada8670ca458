"""The web UI's HTML: escaping, citation links, right-to-left, highlighted evidence, reports."""

from __future__ import annotations

import dataclasses

from ingestion.job import FileIssue, IngestReport
from rag import Answer, Citation, CollectionNotFoundError
from rag.evidence import Evidence
from rag.languages import text_direction
from tests.helpers import hit
from ui import render
from ui.uploads import safe_file_name


def answer(text: str, language: str = "de", cited: bool = True, **kw) -> Answer:
    h = hit("パスワードは14文字以上で設定してください。<b>短い</b>パスワードは危険です。", source="/kb/ja_policy.md")
    return Answer(question="?", text=text, language=language, question_language=language,
                  citations=[Citation(1, h, cited)], **kw)  # fmt: skip


def test_answer_markers_become_links_to_this_turns_sources_and_html_is_escaped():
    html = render.final_answer(answer("Mindestens 14 Zeichen [1], siehe [7]. <script>x()</script>"), turn=3)
    assert '<a class="babel-cite" href="#babel-src-3-1">[1]</a>' in html
    assert "[7]" in html and "babel-src-3-7" not in html  # no source 7: left as text
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'dir="ltr"' in html and 'lang="de"' in html and "babel-done" in html


def test_arabic_answer_and_passage_are_right_to_left():
    assert 'dir="rtl"' in render.final_answer(answer("يجب أن تتكون كلمة المرور من 14 حرفًا [1].", "ar"), 0)
    h = dataclasses.replace(hit("نص عربي"), chunk=dataclasses.replace(hit("نص عربي").chunk, language="ar"))
    assert 'class="babel-passage" dir="rtl" lang="ar"' in render.source_cards(0, [h])
    assert [text_direction(c) for c in ("ar", "he", "fa", "ur", "de", "ja", None)] == ["rtl"] * 4 + ["ltr"] * 3


def test_not_found_answer_is_marked():
    assert "babel-not-found" in render.final_answer(answer("Dazu steht nichts in den Quellen.", found=False), 0)


def test_source_card_highlights_evidence_escapes_and_fades_the_unseen_tail():
    a = answer("14 Zeichen [1].")
    a.citations[0] = dataclasses.replace(a.citations[0], truncated=True, shown_chars=22)
    evidence = {1: Evidence(1, ((0, 22),), ("14 Zeichen [1].",))}
    html = render.source_cards(2, answer=a, evidence=evidence)
    assert 'id="babel-src-2-1"' in html and "babel-cited" in html and ">cited<" in html
    assert '<mark class="babel-evidence">パスワードは14文字以上で設定してください。</mark>' in html
    assert '<span class="babel-unseen"' in html and "&lt;b&gt;短い&lt;/b&gt;" in html and "<b>短い" not in html
    assert "ja_policy.md" in html and "score 0.500" in html


def test_sources_panel_shows_only_the_last_turn():
    html = render.sources_panel(["<p>a</p>", "<p>b</p>"])
    assert '<section class="babel-turn" data-turn="0" hidden>' in html
    assert '<section class="babel-turn" data-turn="1">' in html
    assert "appear here" in render.sources_panel([])


def test_ingest_report_names_the_uploaded_file_not_the_server_folder():
    stored = "/srv/uploads/kb/bericht.pdf"
    report = IngestReport("kb", added=["/srv/uploads/kb/a.md"], unchanged=["/srv/uploads/kb/b.md"],
                          failed=[FileIssue(stored, f"{stored}: not a readable PDF")])  # fmt: skip
    html = render.ingest_report(report, {stored: "Bericht.pdf"})
    assert "1 added" in html and "1 unchanged" in html and "1 failed" in html and "0 updated" in html
    assert "Bericht.pdf: failed: Bericht.pdf: not a readable PDF" in html and "/srv/uploads" not in html


def test_errors_are_one_readable_line():
    missing = render.error_box(CollectionNotFoundError("collection 'x' does not exist"))
    assert "collection &#x27;x&#x27; does not exist" in missing and "Knowledge bases" in missing
    other = render.error_box(KeyError("boom"))
    assert "Unexpected KeyError" in other and "Traceback" not in other and 'role="alert"' in other


def test_status_line_names_question_and_answer_language():
    line = render.status_line("de", "de", answer("14 Zeichen [1].", timings={"total": 2.5}))
    assert line.startswith("Question language: **Deutsch (de)** · answer in **Deutsch (de)**")
    assert "cites [1]" in line and "2.5 s" in line
    assert render.status_line(None, None).startswith("Question language: **?**")
    retried = answer("14 Zeichen [1].", language_attempts=2, withheld=["the answer copied source [1] word for word"])
    assert "asked again: the answer copied source [1] word for word" in render.status_line("de", "de", retried)


def test_language_choices_start_with_automatic():
    choices = render.language_choices()
    assert choices[0] == ("Automatic: the question's language", "auto")
    assert ("Arabic · العربية (ar)", "ar") in choices and ("Thai · ภาษาไทย (th)", "th") in choices


def test_safe_file_name_keeps_letters_of_any_script_and_drops_folders():
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("情報 セキュリティ.md") == "情報 セキュリティ.md"
    assert safe_file_name(".hidden\x00name.txt") == "hiddenname.txt"
    assert safe_file_name("..") == "upload"


def test_an_answer_cut_off_keeps_its_text_escaped_and_says_it_is_incomplete():
    html = render.cut_off_answer("يغادر القطار <b>في</b> العاشرة [1]", "ar")
    assert "babel-cut-off" in html and "babel-done" not in html and 'dir="rtl"' in html and 'lang="ar"' in html
    assert "&lt;b&gt;في&lt;/b&gt;" in html and "<b>" not in html
    assert html.index("العاشرة [1] …") < html.index(render.esc(render.CUT_OFF))
