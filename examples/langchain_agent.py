"""BabelRAG in LangChain: the sample handbook as a retriever, then as an agent's search tool.

    pip install 'babelrag[langchain]'
    babelrag llm serve --config configs/cpu-small.yaml --detach   # the LLM the agent runs on
    python examples/langchain_agent.py

Config: BABELRAG_CONFIG, else configs/cpu-small.yaml (the 0.5B stand-in model on a CPU). That
model's tool calls parse only when forced (bench/agent_tools.py), so the agent uses
``SearchFirst(then="answer")``: it must search first, then answers with no tools offered. A
model that calls tools well needs no middleware: ``create_agent(model, knowledge_base_tools(rag))``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from langchain.agents import create_agent
from langchain_openai import ChatOpenAI

from rag import Pipeline, load_settings
from rag.integrations.langchain import AGENT_SYSTEM_PROMPT, BabelRAGRetriever, SearchFirst, search_tool

HERE = Path(__file__).resolve().parent


def main() -> int:
    settings = load_settings(os.environ.get("BABELRAG_CONFIG", HERE.parent / "configs" / "cpu-small.yaml"))
    rag = Pipeline(settings)
    rag.ingest([HERE / "handbook"], collection="handbook")

    # 1. The retriever: a German question; the answer is in the Japanese file.
    retriever = BabelRAGRetriever(pipeline=rag, collection="handbook", k=3)
    for doc in retriever.invoke("Wie oft muss das Zertifikat für den Fernzugriff erneuert werden?"):
        m = doc.metadata
        print(f"{m['file_name']:<24} {m['language']}  chars {m['start']}-{m['end']}  score {m['score']:.3f}")

    # 2. An agent on the LLM server of llm.base_url, with the knowledge base as its search tool.
    if not rag.readiness()["llm"].ok:
        print(f"no LLM at {settings.llm.base_url}: start one with `babelrag llm serve --detach`", file=sys.stderr)
        return 1
    model = ChatOpenAI(
        base_url=settings.llm.base_url, model=settings.llm.model, api_key="x", temperature=0,
        max_tokens=settings.llm.max_tokens,
    )  # fmt: skip
    agent = create_agent(
        model, [search_tool(rag, collection="handbook")], system_prompt=AGENT_SYSTEM_PROMPT,
        middleware=[SearchFirst(then="answer")],
    )  # fmt: skip
    question = "海外出張中の1日あたりの食事手当はいくらですか。その金額がどのように決められたのかも説明してください。"
    result = agent.invoke({"messages": [("user", question)]})  # the answer is in the Arabic file
    for message in result["messages"]:
        message.pretty_print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
