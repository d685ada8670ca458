"""What the bench scripts share: paths, the xquad files, a pipeline on a throwaway store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
XQUAD = ROOT.parent / "shared" / "data" / "xquad"
CPU_CONFIG = ROOT / "configs" / "cpu-small.yaml"
sys.path.insert(0, str(ROOT))  # run as `python bench/NAME.py` from a checkout

from rag import Pipeline, load_settings  # noqa: E402


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def scratch_pipeline(config: Path, store_path: Path) -> Pipeline:
    """A Pipeline with ``config``'s models on a fresh embedded Chroma at ``store_path``."""
    settings = load_settings(config)
    settings.store.path = store_path
    settings.store.url = None
    return Pipeline(settings)
