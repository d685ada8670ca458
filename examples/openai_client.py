"""Ask a BabelRAG knowledge base through its OpenAI-compatible endpoint with the ``openai`` package.

    babelrag ingest examples/handbook -c handbook && babelrag serve     # in another terminal
    python examples/openai_client.py "海外出張中の1日あたりの食事手当はいくらですか。"

BABELRAG_URL (default http://127.0.0.1:7860/v1) and BABELRAG_SERVER_TOKEN (the server's
server.token, if it has one) say where the server is and how to get in.
"""

from __future__ import annotations

import os
import sys

from openai import OpenAI

question = sys.argv[1] if len(sys.argv) > 1 else "Wie viele Tage im Jahr darf man aus dem Ausland arbeiten?"
client = OpenAI(
    base_url=os.environ.get("BABELRAG_URL", "http://127.0.0.1:7860/v1"),
    api_key=os.environ.get("BABELRAG_SERVER_TOKEN", "none"),  # any key works on a server without a token
)
print("knowledge bases:", ", ".join(m.id for m in client.models.list()))
stream = client.chat.completions.create(
    model="handbook",  # the knowledge base to answer from
    messages=[{"role": "user", "content": question}],
    stream=True,
    extra_body={"top_k": 4},  # BabelRAG's query options: top_k, where, reranker, language
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.choices and chunk.choices[0].finish_reason == "stop":
        print("\n")
        for c in chunk.model_extra["citations"]:  # BabelRAG's extension: the sources the [n] markers name
            page = f", page {c['page']}" if c["page"] else ""
            print(f"{'*' if c['cited'] else ' '} [{c['number']}] {c['file_name']}{page}")  # * cited in the answer
