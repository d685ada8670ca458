"""How often the served LLM calls BabelRAG's search tool in a form vLLM's tool-call parser accepts.

    python bench/agent_tools.py [--base-url http://127.0.0.1:8011/v1] [--config configs/cpu-small.yaml]
        [--variants auto,auto+system,named+system,required] [--json PATH]

Asks 16 questions about the sample handbook, 2 per language (en, de, ru, ar, hi, th, zh, ja),
through ``langchain_openai.ChatOpenAI.bind_tools([search_knowledge_base])`` (the real tool of
``rag.integrations.langchain``), one request each, no tool run, and counts the replies:

- ``call``: a parsed ``tool_calls`` entry naming search_knowledge_base with a non-empty ``query``
- ``invalid``: vLLM's parser rejected what the model wrote (LangChain's ``invalid_tool_calls``), or
  a tool call with another name or without a query
- ``text``: a plain reply; ``as text`` counts those that write the call as JSON in the text
  (``{"name": "search_knowledge_base", ...}``, bare, fenced or cut off) without the
  ``<tool_call>`` tags the hermes parser looks for

and how often the query is the question word for word (``verbatim``), as the tool's argument
description asks. Variants: ``auto`` (tool_choice auto, the question alone), ``auto+system``
(auto, with ``AGENT_SYSTEM_PROMPT``), ``named+system`` (tool_choice naming the tool, with the
prompt: what ``SearchFirst`` does on an agent's first call; vLLM constrains the output to the
call), ``required`` (tool_choice "required", no prompt). Prints the vLLM flags of the server
(read from /proc for a local one), then the counts per variant and language.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

from common import CPU_CONFIG, ROOT

from rag import Pipeline, load_settings

QUESTIONS = [
    ("en", "How much money do employees who work from home get for their home workspace?"),
    ("en", "When was Nordlicht Robotics founded?"),
    ("de", "Wie oft muss das Zertifikat für den Fernzugriff erneuert werden?"),
    ("de", "Wie viele Urlaubstage bekommt eine Vollzeitkraft?"),
    ("ru", "Какую скидку в столовой получают сотрудники со своим контейнером?"),
    ("ru", "Как часто заменяют рабочие ноутбуки?"),
    ("ar", "كم عدد أيام الإجازة السنوية المدفوعة للموظف بدوام كامل؟"),
    ("ar", "ما هو بدل الوجبات اليومي أثناء السفر إلى الخارج؟"),
    ("hi", "कंपनी के लैपटॉप कितने महीनों बाद बदले जाते हैं?"),
    ("hi", "नए कर्मचारियों के मेंटर कितने दिनों तक साथ रहते हैं?"),
    ("th", "บริษัท Nordlicht Robotics ก่อตั้งขึ้นในปีใด"),
    ("th", "พนักงานที่ทำงานจากบ้านได้รับเงินเท่าไร"),
    ("zh", "新员工的导师陪伴期有多长？"),
    ("zh", "远程访问公司网络的证书多久需要更新一次？"),
    ("ja", "海外出張中の1日あたりの食事手当はいくらですか。"),
    ("ja", "社員食堂で自分の容器を持参するといくら割引されますか。"),
]
VARIANTS = ("auto", "auto+system", "named+system", "required")
TOOL = "search_knowledge_base"


def vllm_flags(base_url: str) -> str:
    """The arguments of the local vLLM process listening on ``base_url``'s port, if it can be read."""
    port = base_url.rsplit(":", 1)[-1].split("/")[0]
    for proc in Path("/proc").iterdir():
        try:
            args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if any("vllm" in a for a in args[:3]) and port in args:
            return " ".join(args[args.index("--model") :] if "--model" in args else args)
    return "(not a local process: flags unknown)"


def classify(message) -> str:
    if any(c["name"] == TOOL and str(c["args"].get("query", "")).strip() for c in message.tool_calls):
        return "call"
    if message.tool_calls or message.invalid_tool_calls:
        return "invalid"
    return "text"


def call_as_text(text: str) -> bool:
    """The reply names the tool in a JSON-like call (bare, fenced, prefixed or cut off): the model
    meant to call it, without the <tool_call> tags the hermes parser looks for."""
    return re.search(r'"name"\s*:\s*"' + TOOL + '"', text) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("BABELRAG_E2E_LLM_BASE_URL", "http://127.0.0.1:8011/v1"))
    parser.add_argument("--config", default=str(CPU_CONFIG))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    from rag.integrations.langchain import AGENT_SYSTEM_PROMPT, search_tool

    settings = load_settings(args.config)
    # The real tool, bound as an agent binds it; no tool runs, so neither store nor embedder is opened.
    tool = search_tool(Pipeline(settings), collection="handbook")
    llm = ChatOpenAI(
        base_url=args.base_url, model=settings.llm.model, api_key="x", temperature=0, max_tokens=args.max_tokens,
        timeout=600, max_retries=0,
    )  # fmt: skip
    flags = vllm_flags(args.base_url)
    print(f"server: {args.base_url}  model: {settings.llm.model}\nvLLM flags: {flags}")
    variants = args.variants.split(",")
    results = []
    for variant in variants:
        choice = {"named+system": TOOL, "required": "required"}.get(variant, "auto")
        bound = llm.bind_tools([tool], tool_choice=choice)
        system = [SystemMessage(AGENT_SYSTEM_PROMPT)] if variant.endswith("+system") else []
        for lang, question in QUESTIONS:
            t0 = time.perf_counter()
            reply = bound.invoke([*system, HumanMessage(question)])
            seconds = time.perf_counter() - t0
            kind = classify(reply)
            query = next((c["args"].get("query") for c in reply.tool_calls if c["name"] == TOOL), None)
            results.append(
                {"variant": variant, "lang": lang, "question": question, "kind": kind, "query": query,
                 "verbatim": query == question, "call_as_text": kind == "text" and call_as_text(str(reply.content)),
                 "content": str(reply.content)[:300], "seconds": round(seconds, 1)}
            )  # fmt: skip
            shown = query if query is not None else str(reply.content)[:70].replace("\n", " ")
            print(f"  {variant:<13} {lang}  {kind:<7} {seconds:5.1f}s  {shown}", flush=True)

    print("\nvariant        call invalid text (as text) verbatim  share  calls per language (of 2)")
    for variant in variants:
        rows = [r for r in results if r["variant"] == variant]
        kinds = Counter(r["kind"] for r in rows)
        per_lang = Counter(r["lang"] for r in rows if r["kind"] == "call")
        langs = " ".join(f"{lang}:{per_lang[lang]}" for lang in dict.fromkeys(lang for lang, _ in QUESTIONS))
        as_text, verbatim = sum(r["call_as_text"] for r in rows), sum(r["verbatim"] for r in rows)
        print(
            f"{variant:<13} {kinds['call']:>5} {kinds['invalid']:>7} {kinds['text']:>4} ({as_text:>2})"
            f" {verbatim:>8}  {kinds['call'] / len(rows):5.0%}  {langs}"
        )
    if args.json:
        args.json.write_text(json.dumps({"flags": flags, "results": results}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
