"""The example Grafana dashboard (docs/grafana-dashboard.json) asks only for series /metrics has."""

from __future__ import annotations

import json
import re

from rag import Metrics
from tests.conftest import ROOT

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}


def test_every_series_of_the_dashboard_is_exported():
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries.append(dashboard["templating"]["list"][0]["query"])
    asked = {name for q in queries for name in re.findall(r"\b(?:babelrag|process)_[a-z_]+\b", q)}
    exported = set()
    for family in Metrics(health=dict).registry.collect():
        exported |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    assert len(asked) >= 15 and asked <= exported, sorted(asked - exported)
