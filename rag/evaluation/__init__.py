"""Evaluation on parallel multilingual benchmarks (the format of shared/data/xquad), apart from the
core package: nothing in ``rag`` imports it. ``retrieval``: nDCG/recall over the language matrix and
the polyglot corpus (``babelrag eval retrieval``); ``answers``: answers through the LLM, scored for
language, gold answer and citation (``babelrag eval answers``). Both call only ``rag.Pipeline``."""
