"""Which paths POST /v1/jobs takes from whom (no models: the path check alone)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rag.config import load_settings
from rag.errors import IngestionError
from ui.rest import IngestJobs, IngestRequest


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


def test_a_symlink_inside_a_root_does_not_lead_out_of_it(tmp_path):
    from ingestion.loader import discover

    root, outside = tmp_path / "kb", tmp_path / "secrets"
    (root / "ja").mkdir(parents=True)
    outside.mkdir()
    (outside / "passwd.txt").write_text("root:x:0:0", encoding="utf-8")
    (root / "ja" / "規程.md").write_text("# 規程\n\nパスワードは14文字以上。", encoding="utf-8")
    (root / "ja" / "leak.txt").symlink_to(outside / "passwd.txt")
    (root / "ja" / "inside.md").symlink_to(root / "ja" / "規程.md")  # a link that stays inside is fine
    files, skipped = discover([root], [".md", ".txt"], roots=[root])
    assert files == [(root / "ja" / "規程.md").resolve()]
    ((path, reason),) = skipped
    assert path == str(root / "ja" / "leak.txt") and "outside the folders this server ingests from" in reason
    assert (outside / "passwd.txt").resolve() in discover([root], [".md", ".txt"])[0]  # no roots: followed


def test_server_jobs_are_confined_to_the_roots_the_whole_way_down(tmp_path):
    calls = []
    pipeline = SimpleNamespace(
        settings=load_settings(server={"ingest_roots": [tmp_path]}),
        ingest=lambda paths, collection, **kw: calls.append(kw) or SimpleNamespace(),
    )
    jobs = IngestJobs(pipeline)
    jobs.submit(IngestRequest(paths=[str(tmp_path)], collection="kb"), "10.0.0.7")
    jobs._runner.shutdown(wait=True)
    assert calls and calls[0]["roots"] == [tmp_path.resolve()]


# -- uploads, tokens, the error shape and the answer's events (no models either) -------------------


def upload(name: str, data: bytes):
    import io

    from fastapi import UploadFile

    return UploadFile(io.BytesIO(data), filename=name, size=len(data))


def test_an_upload_over_the_limit_is_a_413_before_any_file_is_written(tmp_path):
    import asyncio

    from fastapi import HTTPException

    from ui.rest import stage_uploads

    staging = tmp_path / ".staging" / "job"
    staged = asyncio.run(stage_uploads([upload("../x.txt", b"eins"), upload("x.txt", b"zwei")], staging, limit_mb=1))
    assert [(name, path.read_bytes()) for name, path in staged] == [("../x.txt", b"eins"), ("x.txt", b"zwei")]
    refused = tmp_path / ".staging" / "refused"
    with pytest.raises(HTTPException) as caught:
        asyncio.run(stage_uploads([upload("ok.txt", b"1"), upload("big.txt", b"a" * (1024 * 1024 + 1))], refused, 1))
    assert (
        caught.value.status_code == 413
        and "big.txt" in caught.value.detail
        and "max_upload_mb=1" in caught.value.detail
    )
    assert not refused.exists()  # nothing of a refused batch is written


def test_token_from_bearer_or_basic_and_the_access_it_grants():
    from base64 import b64encode

    from fastapi import HTTPException
    from starlette.requests import Request

    from rag.access import Access
    from ui.auth import Tokens

    def request(authorization: str | None) -> Request:
        headers = [(b"authorization", authorization.encode())] if authorization else []
        return Request({"type": "http", "method": "POST", "path": "/v1/jobs", "headers": headers})

    assert Tokens(load_settings().server).check(request(None)) is None  # no token configured: open
    bot = {"name": "support-bot", "secret": "b" * 24, "collections": ["support-ja"]}
    tokens = Tokens(load_settings(server={"token": "s3cret", "read_token": "r3ad", "tokens": [bot]}).server)
    assert tokens.check(request("Bearer s3cret"), write=True) == Access("server.token", write=True)
    browser = tokens.check(request("Basic " + b64encode(b"anyone:s3cret").decode()))  # a browser's, for /docs
    assert browser is not None and browser.name == "server.token"
    assert tokens.check(request("Bearer " + "b" * 24)) == Access("support-bot", False, frozenset({"support-ja"}))
    for bad in (None, "Bearer wrong", "Basic !!", "Token s3cret", "Bearer s3cre", "Bearer s3cret2"):
        with pytest.raises(HTTPException) as caught:
            tokens.check(request(bad))
        assert caught.value.status_code == 401 and "Authorization: Bearer <token>" in caught.value.detail
    for reader in ("r3ad", "b" * 24):
        with pytest.raises(HTTPException) as caught:
            tokens.check(request(f"Bearer {reader}"), write=True)
        assert caught.value.status_code == 403 and "POST /v1/jobs writes" in caught.value.detail


def test_a_token_reaches_only_its_collections():
    from rag.access import Access, acting_as, require, visible
    from rag.errors import AccessDeniedError

    bot = Access("support-bot", write=False, collections=frozenset({"support-de", "support-ja"}))
    with acting_as(bot):
        require("support-ja")
        assert visible(["hr", "support-de", "support-ja"]) == ["support-de", "support-ja"]
        with pytest.raises(
            AccessDeniedError, match="'support-bot' is for collections support-de, support-ja, not 'hr'"
        ):
            require("hr")
        with pytest.raises(AccessDeniedError, match="'support-bot' only reads"):
            require("support-ja", write=True)
    require("hr", write=True)  # outside a request: no limits
    assert visible(["hr"]) == ["hr"]


def test_error_shape_and_statuses():
    from rag.errors import (
        CollectionNotFoundError,
        GenerationError,
        IngestionError,
        LeaseHeldError,
        QueryError,
        StoreError,
    )  # fmt: skip
    from ui.errors import error_body, status_of

    assert error_body(404, "no such job", "not_found") == {
        "error": {"message": "no such job", "type": "not_found", "code": 404}
    }
    assert error_body(413, "too big")["error"]["type"] == "too_large"
    assert [status_of(e) for e in (
        CollectionNotFoundError("x"), LeaseHeldError("x", {}), QueryError("empty"),
        QueryError("'a' is not a document of collection 'kb'"), GenerationError("x"), StoreError("x"),
        IngestionError("x"),
    )] == [404, 409, 400, 404, 503, 503, 400]  # fmt: skip


class ScriptedStream:
    """What answer_events reads of an AnswerStream: hits, aevents(), aanswer(), cancel()."""

    def __init__(self, events, fail=None, block=False):
        self.hits, self._events, self._fail, self._block, self.cancelled = [], events, fail, block, False

    async def aevents(self):
        import asyncio

        from rag import AnswerEvent

        for kind, text in self._events:
            yield AnswerEvent(kind, text)
        if self._block:
            await asyncio.sleep(60)
        if self._fail:
            raise self._fail

    async def aanswer(self):
        raise AssertionError("not reached in these tests")

    def cancel(self):
        self.cancelled = True


def test_answer_events_end_with_an_error_event_and_a_gone_client_cancels():
    import asyncio
    import json

    from rag.errors import GenerationError
    from ui.rest import answer_events

    async def read(stream, n=None):
        out = []
        gen = answer_events(stream)
        async for chunk in gen:
            out.append(chunk.decode())
            if n is not None and len(out) == n:
                await gen.aclose()  # the client went away
                break
        return out

    failing = ScriptedStream([("delta", "Hallo"), ("reset", "wrong language")], fail=GenerationError("vLLM died"))
    wire = asyncio.run(read(failing))
    assert [c.split("\n")[0] for c in wire] == ["event: sources", "event: delta", "event: reset", "event: error"]
    assert json.loads(wire[2].split("data: ")[1]) == {"reason": "wrong language"}
    assert json.loads(wire[-1].split("data: ")[1]) == {
        "error": {"message": "vLLM died", "type": "GenerationError", "code": 503}
    }
    assert not failing.cancelled
    slow = ScriptedStream([("delta", "Hallo")], block=True)
    asyncio.run(read(slow, n=2))
    assert slow.cancelled
