"""The module graph: ingestion builds on rag's base modules only; the core never imports the
facade, evaluation or a front end; front ends import only the public API."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# rag modules that use both packages: the facade (Pipeline), its hand-off client, the CLI and doctor, and
# what rag/__init__ re-exports from ingestion (IngestReport, FileIssue, JobProgress, Loader).
FACADE = {"rag", "rag.pipeline", "rag.remote", "rag.cli", "rag.doctor"}
# What a front end may import from rag: the public package, the schema of what it passes in, and
# rag.access (how a server says whom a request acts for).
PUBLIC = {"rag", "rag.config", "rag.errors", "rag.options", "rag.languages", "rag.access"}
FRONT_ENDS = ("ui", "rag/integrations")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(folder: str) -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted((ROOT / folder).rglob("*.py"))}


def test_ingestion_builds_on_the_base_of_rag_only():
    base = {
        "rag.config", "rag.types", "rag.errors", "rag.store", "rag.embedder", "rag.centroids", "rag.locks",
        "rag.models", "rag.text", "rag.language",
    }  # fmt: skip
    for name, found in modules("ingestion").items():
        # ingestion/__init__ loads rag first (rag's public API re-exports ingestion's report types)
        used = {m for m in found if m.startswith("rag.") or (m == "rag" and name != "ingestion")}
        assert used <= base, f"{name} imports {sorted(used - base)}: ingestion must not reach above rag's base"


def test_the_core_never_imports_ingestion_evaluation_or_front_ends():
    for name, found in modules("rag").items():
        if name in FACADE or name.startswith(("rag.evaluation", "rag.integrations")):
            continue
        bad = {m for m in found if m.split(".")[0] in ("ingestion", "ui") or m.startswith("rag.evaluation")}
        bad |= {m for m in found if m in ("rag.pipeline", "rag.cli")}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_front_ends_import_only_the_public_api():
    for folder in FRONT_ENDS:
        for name, found in modules(folder).items():
            used = {m for m in found if m == "rag" or (m.startswith("rag.") and not m.startswith("rag.integrations"))}
            assert used <= PUBLIC, f"{name} imports {sorted(used - PUBLIC)}; front ends use the public API (rag)"
