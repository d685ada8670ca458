"""The app of `babelrag serve` (REST API + Gradio UI on one FastAPI app) over the real embedding
model and an embedded Chroma holding the handbook. The LLM here is a scripted OpenAI-compatible
server, so what the browser must show (a marker's source, the supporting sentence, right-to-left
Arabic) and the error paths (a server that answers 500) are exact; tests/e2e runs the same UI
against real vLLM."""

from __future__ import annotations

import html
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rag import Pipeline, load_settings
from tests.conftest import EXAMPLES, ROOT, free_port, need_env, wait_until_serving
from tests.helpers import FakeLLM
from tests.helpers_web import AppServer, browser, screenshot  # noqa: F401 -- browser is a fixture
from ui.server import create_app
from ui.web import Session, WebUI

pytestmark = [pytest.mark.model, pytest.mark.integration]

GERMAN = "Wie viele Zeichen muss ein Passwort mindestens haben?"
GERMAN_ANSWER = "Ein Passwort muss mindestens 14 Zeichen lang sein [1]."
ARABIC = "كم عدد الأحرف المطلوبة في كلمة المرور على الأقل؟"
ARABIC_ANSWER = "يجب أن تتكون كلمة المرور من 14 حرفًا على الأقل، لأن كلمات المرور القصيرة يمكن كسرها بسرعة [1]."


@pytest.fixture(scope="module")
def handbook(tmp_path_factory):
    need_env("BABELRAG_EMBEDDING_MODEL")
    settings = load_settings(
        ROOT / "configs" / "cpu-small.yaml",
        store={"path": str(tmp_path_factory.mktemp("chroma")), "collection": "handbook"},
        server={"upload_dir": str(tmp_path_factory.mktemp("uploads"))},
        llm={"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0},  # nothing listens there
        generation={"tokenizer": "estimate"},
    )
    pipeline = Pipeline(settings)
    report = pipeline.ingest([EXAMPLES / "handbook"], "handbook")
    assert len(report.added) == 8
    return pipeline


def with_llm(pipeline: Pipeline, url: str, **server) -> Pipeline:
    settings = pipeline.settings.model_copy(deep=True)
    settings.llm.base_url = url
    settings.server = type(settings.server).model_validate({**settings.server.model_dump(), **server})
    return Pipeline(settings, embedder=pipeline.embedder, store=pipeline.store, language=pipeline.language)


def test_rest_api_answers_and_says_what_went_wrong(handbook):
    with FakeLLM(GERMAN_ANSWER) as llm:
        client = TestClient(create_app(pipeline=with_llm(handbook, llm.url)))
        assert client.get("/healthz").json()["status"] == "ok"
        collections = {c["name"]: c for c in client.get("/v1/collections").json()}
        assert collections["handbook"]["documents"] == 8
        documents = client.get("/v1/collections/handbook/documents").json()
        assert {d["file_name"]: d["language"] for d in documents}["ja_security_policy.md"] == "ja"
        missing = client.get("/v1/collections/nope/documents")
        assert missing.status_code == 404 and "collection 'nope' does not exist" in missing.json()["error"]["message"]
        hits = client.post("/v1/search", json={"query": GERMAN, "collection": "handbook", "top_k": 2}).json()["hits"]
        assert hits[0]["file_name"] == "ja_security_policy.md" and len(hits) == 2
        answer = client.post("/v1/ask", json={"question": GERMAN, "collection": "handbook"}).json()
        assert answer["text"] == GERMAN_ANSWER and answer["question_language"] == "de" and answer["found"]
        assert answer["citations"][0]["file_name"] == "ja_security_policy.md" and answer["citations"][0]["cited"]
        empty = client.post("/v1/ask", json={"question": "  ", "collection": "handbook"})
        assert empty.status_code == 400 and "question" in empty.json()["error"]["message"]
        unnamed = client.post("/v1/ask", json={"q": GERMAN})
        assert unnamed.status_code == 400 and "question" in unnamed.json()["error"]["message"]  # names the field
    down = TestClient(create_app(pipeline=handbook))  # llm.base_url: nothing listens
    failed = down.post("/v1/ask", json={"question": GERMAN, "collection": "handbook"})
    assert failed.status_code == 503
    assert handbook.settings.llm.base_url.split("/v1")[0] in failed.json()["error"]["message"]


def test_babelrag_serve_serves_ui_and_api_with_host_and_port_from_config(handbook, tmp_path):
    import os
    import subprocess

    import httpx

    from tests.integration.test_cli import BABELRAG

    handbook.close()  # the embedded store is one process's at a time: this one lets go for serve's
    port = free_port()
    env = {
        **os.environ, "BABELRAG_SERVER_PORT": str(port), "BABELRAG_SERVER_TOKEN": "t0ken",
        "BABELRAG_STORE_PATH": str(handbook.settings.store.path), "BABELRAG_SERVER_UPLOAD_DIR": str(tmp_path),
    }  # fmt: skip
    proc = subprocess.Popen(
        [BABELRAG, "serve", "--config", str(ROOT / "configs" / "cpu-small.yaml")], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/healthz", proc, ready=lambda r: r.status_code == 200, what="babelrag serve")
        headers = {"Authorization": "Bearer t0ken"}
        assert httpx.get(f"{url}/v1/collections").status_code == 401  # the token is asked for
        assert [c["name"] for c in httpx.get(f"{url}/v1/collections", headers=headers).json()] == ["handbook"]
        assert httpx.get(f"{url}/").text.lower().startswith("<!doctype html>")  # the UI's page (or its login)
        browser = httpx.Client(base_url=url)
        assert browser.get("/config").status_code == 401
        assert browser.post("/login", data={"username": "me", "password": "t0ken"}).status_code == 200
        assert browser.get("/config").json()["title"] == "BabelRAG"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"BabelRAG web UI: http://localhost:{port}/ (login: server.token)" in out, out + err
    assert "Traceback" not in err


def test_token_guards_rest_api_and_ui(handbook):
    client = TestClient(create_app(pipeline=with_llm(handbook, handbook.settings.llm.base_url, token="s3cret")))
    denied = client.get("/v1/collections")
    assert denied.status_code == 401 and "Bearer" in denied.json()["error"]["message"]
    assert client.get("/v1/collections", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/collections", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/config").status_code == 401  # the UI's config is behind the login too
    assert client.post("/login", data={"username": "any", "password": "wrong"}).status_code == 400
    assert client.post("/login", data={"username": "any", "password": "s3cret"}).status_code == 200
    assert client.get("/config").status_code == 200  # the login cookie opens the UI


def test_chat_handler_shows_a_down_llm_as_a_message_and_keeps_the_question(handbook):
    with FakeLLM({"status": 500, "message": "model crashed"}) as llm:
        ui = WebUI(with_llm(handbook, llm.url, token=None))
        outputs = list(ui.respond(GERMAN, [], Session(), "handbook", "none", 3, "auto"))
    chatbot, box, _status, sources, error, session = outputs[-1]
    assert any("ja_security_policy.md" in str(o[3]) for o in outputs)  # the sources were shown, then
    assert "ja_security_policy.md" not in sources  # ... went with the failed turn
    assert "answered HTTP 500" in error and llm.url.split("/v1")[0] in error and "Traceback" not in error
    assert box == GERMAN and chatbot == [] and session.turns == []


def test_two_chats_at_once_each_get_their_answer(handbook):
    from concurrent.futures import ThreadPoolExecutor

    with FakeLLM({"text": GERMAN_ANSWER, "delay_s": 0.05}) as llm:
        ui = WebUI(with_llm(handbook, llm.url))

        def chat(question: str):
            return list(ui.respond(question, [], Session(), "handbook", "none", 3, "auto"))[-1]

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(chat, [GERMAN, STANDALONE]))
    for (chatbot, _box, status, _sources, error, session), question in zip(results, [GERMAN, STANDALONE], strict=True):
        assert error == "" and session.turns[0].question == question and session.turns[0].answer == GERMAN_ANSWER
        assert "babel-done" in chatbot[-1]["content"] and "cites [1]" in status
    assert len(llm.requests) == 2


def test_collection_picker_falls_back_to_an_existing_collection(handbook):
    ui = WebUI(handbook)
    existing = [c.name for c in handbook.collections()]
    assert "default" not in existing  # the configured one does not exist: the first there is instead
    assert ui.refresh_collections("default")["value"] == existing[0]
    assert ui.refresh_collections("handbook")["value"] == "handbook"
    assert ("handbook (8 files)", "handbook") in ui.refresh_collections(None)["choices"]


def test_upload_handler_reports_each_file(handbook, tmp_path):
    ui = WebUI(handbook)
    (tmp_path / "ok.txt").write_text("Die Kantine öffnet um 11:30 Uhr und schließt um 14:00 Uhr.", encoding="utf-8")
    (tmp_path / "virus.exe").write_bytes(b"MZ\x90\x00")
    report, *_ = ui.upload([str(tmp_path / "ok.txt"), str(tmp_path / "virus.exe")], "uploads-test")
    report = html.unescape(report)
    assert "1 added" in report and "1 failed" in report
    assert "virus.exe: failed: " in report and "unsupported extension '.exe'" in report
    assert str(ui.upload_dir) not in report  # the reason names the file, not the server's folder
    assert [e.language for e in handbook.documents("uploads-test")] == ["de"]
    again, *_ = ui.upload([str(tmp_path / "ok.txt")], "uploads-test")
    assert "1 unchanged" in again and "0 added" in again
    bad, *_ = ui.upload([str(tmp_path / "ok.txt")], "no spaces allowed")
    bad = html.unescape(bad)
    assert "collection name 'no spaces allowed' is not valid" in bad
    # A new version that fails leaves the previous one, in the store and in the upload folder.
    source = handbook.documents("uploads-test")[0].source
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "ok.txt").write_bytes(b"")
    failed, *_ = ui.upload([str(tmp_path / "empty" / "ok.txt")], "uploads-test")
    assert "1 failed" in failed and "is empty" in failed
    assert (
        Path(source).read_text(encoding="utf-8").startswith("Die Kantine")
        and len(handbook.documents("uploads-test")) == 1
    )
    message, *_ = ui.delete(source, "uploads-test")
    assert "Deleted ok.txt (1 chunks)" in message and not list((ui.upload_dir / "uploads-test").iterdir())


@pytest.mark.browser
def test_browser_marker_shows_its_source_with_the_supporting_sentence_and_arabic_is_rtl(handbook, browser):  # noqa: F811
    with (
        FakeLLM(GERMAN_ANSWER, ARABIC_ANSWER) as llm,
        AppServer(create_app(pipeline=with_llm(handbook, llm.url))) as app,
    ):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(app.url + "/")
        page.wait_for_function("() => window.babelCitations === true")  # the UI's script ran
        page.fill("#babel-question textarea", GERMAN)
        page.press("#babel-question textarea", "Enter")
        final = page.locator("#babel-chat .babel-answer.babel-done")
        final.wait_for()
        link = final.locator("a.babel-cite")
        assert link.inner_text() == "[1]"
        page.locator("#babel-src-0-1").evaluate("(el) => el.parentElement.scrollTop = 10000")
        link.click()
        card = page.locator("#babel-src-0-1")
        assert "babel-active" in card.get_attribute("class") and card.is_visible()
        assert card.locator(".babel-file").inner_text() == "ja_security_policy.md"
        assert "cited" in card.locator(".babel-badge").inner_text()
        # the Japanese sentence that supports the German claim is highlighted
        assert card.locator("mark.babel-evidence").inner_text() == "パスワードは14文字以上で設定してください。"
        screenshot(page, "ui-citation.png")

        page.click("#babel-new")
        page.fill("#babel-question textarea", ARABIC)
        page.click("#babel-send")
        final.wait_for()
        assert final.get_attribute("dir") == "rtl" and final.get_attribute("lang") == "ar"
        assert final.evaluate("(el) => getComputedStyle(el).direction") == "rtl"
        user = page.locator("#babel-chat .babel-user").last
        assert user.evaluate("(el) => getComputedStyle(el).direction") == "rtl"  # dir=auto: Arabic letters first
        status = page.locator("#babel-status").inner_text()
        assert "Question language: العربية (ar)" in status and "cites [1]" in status
        screenshot(page, "ui-rtl.png")
        page.close()


FOLLOW_UP = "Und warum ist das so?"
STANDALONE = "Warum muss ein Passwort mindestens 14 Zeichen lang sein?"
FOLLOW_UP_ANSWER = "Weil kurze Passwörter in wenigen Stunden geknackt werden können [1]."


def open_page(browser, url: str):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url + "/")
    page.wait_for_function("() => window.babelCitations === true")
    return page


@pytest.mark.browser
def test_browser_follow_up_is_understood_and_old_markers_show_their_own_sources(handbook, browser):  # noqa: F811
    replies = (GERMAN_ANSWER, STANDALONE, FOLLOW_UP_ANSWER)
    with FakeLLM(*replies) as llm, AppServer(create_app(pipeline=with_llm(handbook, llm.url))) as app:
        page = open_page(browser, app.url)
        page.fill("#babel-question textarea", GERMAN)
        page.click("#babel-send")
        page.locator("#babel-chat .babel-answer.babel-done").wait_for()
        page.fill("#babel-question textarea", FOLLOW_UP)
        page.click("#babel-send")
        page.locator("#babel-chat .babel-answer.babel-done").nth(1).wait_for()
        assert f"understood as: {STANDALONE}" in page.locator("#babel-status").inner_text()
        assert GERMAN in llm.prompts[1] and "mindestens 14 Zeichen lang sein" in llm.prompts[1]  # saw the conversation
        assert STANDALONE in llm.prompts[2]  # ... and its question was answered
        assert page.locator('section.babel-turn[data-turn="1"]').is_visible()
        assert not page.locator('section.babel-turn[data-turn="0"]').is_visible()
        page.locator('#babel-chat a.babel-cite[href="#babel-src-0-1"]').click()  # the first answer's [1]
        assert page.locator('section.babel-turn[data-turn="0"]').is_visible()
        assert not page.locator('section.babel-turn[data-turn="1"]').is_visible()
        assert "babel-active" in page.locator("#babel-src-0-1").get_attribute("class")
        page.close()


@pytest.mark.browser
def test_browser_logs_in_with_the_token_through_the_gate_and_chats(handbook, browser):  # noqa: F811
    """With a token, a stranger gets the login page only (ui.server.LoginGate); after logging in
    with the token, everything the UI calls (queue, heartbeat, uploads) passes the gate."""
    with (
        FakeLLM(GERMAN_ANSWER) as llm,
        AppServer(create_app(pipeline=with_llm(handbook, llm.url, token="s3cret"))) as app,
    ):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(app.url + "/")
        page.get_by_text("This BabelRAG server is private").wait_for()
        page.get_by_label("username").fill("anna")
        page.get_by_label("password").fill("wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for()
        page.get_by_label("username").fill("anna")
        page.get_by_label("password").fill("s3cret")
        page.get_by_role("button", name="Login").click()
        page.wait_for_function("() => window.babelCitations === true")  # the UI itself, its script ran
        page.fill("#babel-question textarea", GERMAN)
        page.click("#babel-send")
        final = page.locator("#babel-chat .babel-answer.babel-done")
        final.wait_for()
        assert final.inner_text().startswith("Ein Passwort muss mindestens 14 Zeichen")
        page.close()


@pytest.mark.browser
def test_browser_settings_reach_the_pipeline(handbook, browser):  # noqa: F811
    with (
        FakeLLM("A password needs at least 14 characters [1].") as llm,
        AppServer(create_app(pipeline=with_llm(handbook, llm.url))) as app,
    ):
        page = open_page(browser, app.url)
        page.get_by_text("Settings").click()
        page.locator("#babel-answer-language input").click()
        page.get_by_role("option", name="English · English (en)").click()
        slider = page.locator("#babel-top-k input[type=number]")
        slider.fill("2")
        slider.press("Enter")
        page.fill("#babel-question textarea", GERMAN)
        page.click("#babel-send")
        final = page.locator("#babel-chat .babel-answer.babel-done")
        final.wait_for()
        assert "Answer in English" in llm.prompts[0] and final.get_attribute("lang") == "en"
        assert page.locator("#babel-sources .babel-src").count() == 2  # top-k 2
        status = page.locator("#babel-status").inner_text()
        assert "Question language: Deutsch (de)" in status and "answer in English (en)" in status
        page.close()


@pytest.mark.browser
def test_browser_stop_closes_the_llm_stream(handbook, browser):  # noqa: F811
    slow = {"text": "Ein Passwort muss mindestens vierzehn Zeichen lang sein, " * 20, "delay_s": 0.2}
    with FakeLLM(slow) as llm, AppServer(create_app(pipeline=with_llm(handbook, llm.url))) as app:
        page = open_page(browser, app.url)
        page.fill("#babel-question textarea", GERMAN)
        page.click("#babel-send")
        page.locator("#babel-chat .babel-answer").get_by_text("Passwort").wait_for()
        page.click("#babel-stop")
        deadline = time.monotonic() + 10
        while llm.closed_early == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert llm.closed_early == 1  # the server stopped writing, not only the page
        page.close()


@pytest.mark.browser
def test_browser_files_dropped_on_the_upload_area_are_ingested(handbook, browser):  # noqa: F811
    with AppServer(create_app(pipeline=handbook)) as app:
        page = open_page(browser, app.url)
        page.wait_for_function(
            "() => document.querySelector('#babel-collection input')?.value.startsWith('handbook (')"
        )
        box = page.locator("#babel-collection input")
        box.fill("dropped")
        box.press("Enter")
        page.get_by_role("tab", name="Knowledge bases").click()
        page.locator("#babel-deleted").get_by_text("New knowledge base 'dropped'").wait_for()
        # A real drag and drop: a DataTransfer holding a file, dropped on the upload area.
        page.locator("#babel-upload").evaluate(
            """(area) => {
                const data = new DataTransfer();
                data.items.add(new File(["Кантина открыта с 11:30 до 14:00, обед стоит 6 евро."], "ru_kantine.txt",
                                        {type: "text/plain"}));
                const target = area.querySelector("button, [data-testid=upload]") || area;
                for (const type of ["dragenter", "dragover", "drop"]) {
                    target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));
                }
            }"""
        )
        page.locator("#babel-upload").get_by_text("ru_kantine").wait_for()
        page.click("#babel-ingest")
        page.locator("#babel-report").get_by_text("ru_kantine.txt: added").wait_for()
        assert "1 added" in page.locator("#babel-report").inner_text()
        assert "русский (ru)" in page.locator("#babel-documents").inner_text()
        assert [e.language for e in handbook.documents("dropped")] == ["ru"]
        page.close()
