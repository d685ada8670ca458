"""Pipeline.metrics: what the example Grafana dashboard (docs/grafana-dashboard.json) asks for is
exported, and metrics do not keep a dropped Pipeline (and its models) alive."""

from __future__ import annotations

import gc
import json
import re
import weakref

from rag import Metrics, Pipeline, load_settings
from tests.conftest import ROOT, free_port

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}


def test_every_series_of_the_dashboard_is_exported():
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries.append(dashboard["templating"]["list"][0]["query"])
    asked = {name for q in queries for name in re.findall(r"\b(?:babelrag|process)_[a-z_]+\b", q)}
    exported = set()
    for family in Metrics().registry.collect():
        exported |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    assert len(asked) >= 15 and asked <= exported, sorted(asked - exported)


def test_a_dropped_pipeline_is_freed_at_once(tmp_path):
    """No reference cycle through its metrics: a server or a test suite that makes pipelines one
    after another must not hold each one's loaded models until the cyclic collector runs."""
    llm = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0}  # down: refused at once
    pipeline = Pipeline(load_settings(store={"path": tmp_path / "store", "index_dir": tmp_path / "index"}, llm=llm))
    assert not pipeline.readiness()["llm"].ok  # the health gauges are set
    pipeline.close()
    dropped = weakref.ref(pipeline)
    gc.disable()
    try:
        del pipeline
        assert dropped() is None
    finally:
        gc.enable()
