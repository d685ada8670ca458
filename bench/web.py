"""What the web UI adds to an answer's latency, and what serving it costs in memory.

    python bench/web.py [--runs 5] [--pieces 120] [--piece-delay 0.02]

The LLM is a scripted OpenAI-compatible server that streams the same answer at a fixed pace
(``--pieces`` pieces ``--piece-delay`` seconds apart), so the LLM's speed is the same for every
path and the differences are BabelRAG's. The handbook is ingested into a throwaway store. For
each path, the median over ``--runs`` questions (each different, so no cache helps):

- in process: ``Pipeline.stream``: sources known, first piece, last piece; then
  ``Pipeline.evidence`` (the highlighted sentences), which the UI adds;
- REST: ``POST /v1/ask`` over HTTP (whole answer, no streaming);
- browser: Debian's Chromium clicks Send in the Gradio UI: sources shown, first text shown, the
  finished answer (links, highlighted evidence) shown.

Then the ratio of browser to in-process, and the resident memory of a process before and after
building the app (importing Gradio and laying out the UI).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import CPU_CONFIG, ROOT, scratch_pipeline

sys.path.insert(0, str(ROOT))
import httpx
import psutil

from tests.helpers import FakeLLM
from tests.helpers_web import CHROMIUM, CHROMIUM_ARGS, AppServer

QUESTIONS = [
    "Wie viele Zeichen muss ein Passwort mindestens haben?",
    "Wie oft muss das Zertifikat für den Fernzugriff erneuert werden?",
    "Wie viel Geld bekommen Mitarbeitende für den Arbeitsplatz zu Hause?",
    "Wann wurde Nordlicht Robotics gegründet?",
    "Wie viele Urlaubstage gibt es pro Jahr?",
    "Wie hoch ist der Rabatt in der Kantine mit eigenem Behälter?",
    "Wie lange dauert die Einarbeitung mit einem Mentor?",
    "Nach wie vielen Monaten werden Laptops ersetzt?",
]
ANSWER = "Ein Passwort muss mindestens vierzehn Zeichen lang sein, weil kurze Passwörter schnell geknackt werden [1]. "


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pieces", type=int, default=120)
    ap.add_argument("--piece-delay", type=float, default=0.02)
    args = ap.parse_args()
    text = (ANSWER * 20)[: args.pieces * 4]
    questions = (QUESTIONS * 10)[: args.runs * 3]

    with tempfile.TemporaryDirectory() as tmp, FakeLLM({"text": text, "delay_s": args.piece_delay}) as llm:
        pipeline = scratch_pipeline(CPU_CONFIG, Path(tmp) / "chroma")
        pipeline.settings.llm.base_url = llm.url
        pipeline.settings.generation.tokenizer = "estimate"
        pipeline.ingest([ROOT / "examples" / "handbook"], "handbook")
        pipeline.ask(questions[0], collection="handbook")  # warm: models, caches
        base = rss_mb()
        t0 = time.perf_counter()
        from ui.server import create_app

        app = create_app(pipeline=pipeline)
        built = time.perf_counter() - t0
        after = rss_mb()

        inproc = {"sources": [], "first": [], "done": [], "evidence": []}
        for q in questions[: args.runs]:
            t = time.perf_counter()
            stream = pipeline.stream(q, collection="handbook")
            inproc["sources"].append(time.perf_counter() - t)
            for i, _ in enumerate(stream):
                if i == 0:
                    inproc["first"].append(time.perf_counter() - t)
            answer = stream.answer()
            inproc["done"].append(time.perf_counter() - t)
            t = time.perf_counter()
            pipeline.evidence(answer)  # the UI does this once the answer is finished
            inproc["evidence"].append(time.perf_counter() - t)

        with AppServer(app) as server:
            rest = []
            for q in questions[args.runs : 2 * args.runs]:
                t = time.perf_counter()
                r = httpx.post(f"{server.url}/v1/ask", json={"question": q, "collection": "handbook"}, timeout=120)
                r.raise_for_status()
                rest.append(time.perf_counter() - t)
            browser = browser_runs(server.url, questions[2 * args.runs :])

    med = {k: statistics.median(v) for k, v in inproc.items()}
    bmed = {k: statistics.median(v) for k, v in browser.items()}
    print(
        f"scripted LLM: {args.pieces} pieces, {args.piece_delay * 1000:.0f} ms apart; median of {args.runs} questions"
    )
    print(f"{'path':<12} {'sources':>9} {'first text':>11} {'finished':>9}")
    print(f"{'in process':<12} {med['sources']:>8.2f}s {med['first']:>10.2f}s {med['done']:>8.2f}s")
    print(
        f"{'+ evidence':<12} {'':>9} {'':>11} {med['done'] + med['evidence']:>8.2f}s  (Pipeline.evidence {med['evidence']:.2f}s)"
    )
    print(f"{'REST /ask':<12} {'':>9} {'':>11} {statistics.median(rest):>8.2f}s")
    print(f"{'browser':<12} {bmed['sources']:>8.2f}s {bmed['first']:>10.2f}s {bmed['done']:>8.2f}s")
    print(
        f"browser / in process: sources {bmed['sources'] / med['sources']:.2f}x, first text "
        f"{bmed['first'] / med['first']:.2f}x, finished {bmed['done'] / med['done']:.2f}x "
        f"(+{bmed['done'] - med['done']:.2f} s, of which evidence {med['evidence']:.2f} s)"
    )
    print(f"memory: {base:.0f} MB with the pipeline warm, {after:.0f} MB with the app built (+{after - base:.0f} MB); "
          f"building the app took {built:.1f} s")  # fmt: skip


def browser_runs(url: str, questions: list[str]) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {"sources": [], "first": [], "done": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url + "/")
        page.wait_for_function("() => window.babelCitations === true")
        page.wait_for_function("() => document.querySelector('#babel-collection input')?.value.startsWith('handbook')")
        for q in questions:
            page.click("#babel-new")  # each question alone: no follow-up rewrite
            page.wait_for_function("() => !document.querySelector('#babel-chat .babel-answer')")
            i = 0
            page.fill("#babel-question textarea", q)
            # Timed in the page: a MutationObserver notes when each thing first appears.
            page.evaluate(
                """(i) => {
                window.babelTimes = {start: performance.now()};
                const seen = (k) => { if (!(k in window.babelTimes)) window.babelTimes[k] = performance.now(); };
                new MutationObserver(() => {
                  if (document.querySelector(`#babel-src-${i}-1`)) seen('sources');
                  const answers = document.querySelectorAll('#babel-chat .babel-answer');
                  const last = answers[answers.length - 1];
                  if (answers.length > i && last && last.innerText.replace('▍', '').trim()) seen('first');
                  if (document.querySelectorAll('#babel-chat .babel-answer.babel-done').length > i) seen('done');
                }).observe(document.body, {subtree: true, childList: true, characterData: true});
              }""",
                i,
            )
            page.click("#babel-send")
            page.wait_for_function(
                f"() => document.querySelectorAll('#babel-chat .babel-answer.babel-done').length > {i}"
            )
            times = page.evaluate("() => window.babelTimes")
            for k, values in out.items():
                values.append((times[k] - times["start"]) / 1000)
        browser.close()
    return out


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    main()
