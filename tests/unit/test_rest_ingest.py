"""Which paths POST /api/ingest takes from whom (no models: the path check alone)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rag.config import load_settings
from rag.errors import IngestionError
from ui.rest import IngestJobs


def jobs(**server) -> IngestJobs:
    return IngestJobs(SimpleNamespace(settings=load_settings(server=server)))


def test_without_roots_only_this_machine_may_ingest_its_files(tmp_path):
    open_to_loopback = jobs()
    assert open_to_loopback.check_paths([str(tmp_path)], "127.0.0.1") == [tmp_path.resolve()]
    assert open_to_loopback.check_paths([str(tmp_path)], "::1") == [tmp_path.resolve()]
    with pytest.raises(IngestionError, match="only for clients on its machine.*server.ingest_roots"):
        open_to_loopback.check_paths([str(tmp_path)], "10.0.0.7")
    with pytest.raises(IngestionError, match="must be absolute"):
        open_to_loopback.check_paths(["docs/handbook"], "127.0.0.1")


def test_with_roots_any_client_but_only_inside_them(tmp_path):
    root = tmp_path / "kb"
    (root / "de").mkdir(parents=True)
    confined = jobs(ingest_roots=[root])
    assert confined.check_paths([str(root / "de")], "10.0.0.7") == [(root / "de").resolve()]
    for outside in (tmp_path, tmp_path / "kb-other", root / ".." / "secrets", "/etc/passwd"):
        with pytest.raises(IngestionError, match="outside the folders this server ingests from"):
            confined.check_paths([str(outside)], "127.0.0.1")
    (root / "link").symlink_to(tmp_path)  # a link out of the root is judged by where it points
    with pytest.raises(IngestionError, match="outside"):
        confined.check_paths([str(root / "link")], "127.0.0.1")
