"""Adapters from BabelRAG's public API to other frameworks; each module needs its extra
(``rag.integrations.langchain``: ``pip install 'babelrag[langchain]'``)."""
