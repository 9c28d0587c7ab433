"""The documents' rooms without a server (impetus.documents): text from each kind of file,
chunks cut from the original text, filters, expiry, limits, and the ingest lease of a worker
that died. The embedding model is the real packaged one, loaded in this process."""

from __future__ import annotations

import io
import json
import time

import pytest
from docx import Document

from impetus.documents import chunking
from impetus.documents.extract import extract
from impetus.documents.filters import matches
from impetus.documents.service import Documents
from impetus.embeddings.host import EmbeddingHost
from impetus.settings import Settings
from impetus.web import APIError


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("documents"), file_max_bytes=2000, file_quota_bytes=3000)
    return Documents(settings, EmbeddingHost(settings), start=False)


def _code(call) -> tuple[int, str]:
    with pytest.raises(APIError) as caught:
        call()
    error = caught.value.body["error"]
    return int(caught.value.status.split()[0]), error["code"]


def test_text_from_each_kind_of_file():
    page = b"<html><head><style>p{}</style><script>var x=1;</script></head><body><h1>Title</h1><p>One &amp; two</p></body>"
    assert extract("page.html", page) == "Title\nOne & two"
    docx = Document()
    docx.add_paragraph("First paragraph.")
    table = docx.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "cell a", "cell b"
    data = io.BytesIO()
    docx.save(data)
    assert extract("notes.docx", data.getvalue()) == "First paragraph.\ncell a\tcell b"
    assert extract("utf16.txt", "héllo".encode("utf-16")) == "héllo"
    assert extract("bom.md", "\ufeff# Hi".encode()) == "# Hi"
    for name, data, code in (("x.exe", b"MZ", "unsupported_file"), ("x.txt", b"\xff\xfe\x00", "invalid_file"),
                             ("x.txt", b"ok\x00\x00binary", "invalid_file"), ("x.md", b"  \n ", "empty_file"),
                             ("x.docx", b"not a zip", "invalid_file")):
        assert _code(lambda: extract(name, data)) == (400, code), name


def test_chunks_are_cut_from_the_original_text_with_their_overlap(documents):
    model = documents.ingest.embeddings.get(documents.model_name)
    text = " ".join(f"Word{i}, CASE kept." for i in range(300))
    chunks = chunking.chunks(model, text, 100, 30)
    assert all(c.text in text for c in chunks) and chunks[0].text.startswith("Word0, CASE")
    assert [len(c.ids) for c in chunks[:-1]] == [100] * (len(chunks) - 1)
    assert chunks[1].ids[:30] == chunks[0].ids[70:]  # 30 tokens of overlap
    assert chunking.check(100, 51) and chunking.check(99, 0) and chunking.check(800, 400) is None
    long = chunking.chunks(model, text, 800, 0)[0]
    assert [len(p) for p in chunking.pieces(model, long)] == [256, 256, 256, 2 + 800 - 3 * 254]


def test_filters_as_openai_defines_them():
    attributes = {"team": "ops", "pages": 3, "draft": False}
    assert matches({"type": "eq", "key": "team", "value": "ops"}, attributes)
    assert matches({"type": "ne", "key": "missing", "value": 1}, attributes)
    assert not matches({"type": "gt", "key": "team", "value": 1}, attributes)  # a string is not above a number
    assert matches({"type": "nin", "key": "team", "value": ["dev"]}, attributes)
    assert matches({"type": "or", "filters": [{"type": "eq", "key": "draft", "value": True},
                                               {"type": "lte", "key": "pages", "value": 3}]}, attributes)
    assert not matches({"type": "and", "filters": [{"type": "eq", "key": "team", "value": "ops"},
                                                    {"type": "in", "key": "missing", "value": ["x"]}]}, attributes)


def test_limits_expiry_and_ownership(documents):
    files = documents.files
    assert _code(lambda: files.create("alice", "big.txt", "assistants", b"a" * 2001, None)) == (413, "file_too_large")
    kept = files.create("alice", "a.txt", "assistants", b"a" * 1500, None)
    assert _code(lambda: files.create("alice", "b.txt", "assistants", b"b" * 1600, None)) == \
        (429, "storage_quota_exceeded")
    assert _code(lambda: files.get("bob", kept["id"])) == (404, "file_not_found")
    answers = files.create("alice", "batch_output.jsonl", "batch_output", b"{}\n" * 2000, None)  # made here
    assert answers["bytes"] == 6000
    files.delete("alice", answers["id"])
    soon = files.create("bob", "soon.txt", "assistants", b"soon", 3600)
    with documents.db.transaction() as db:
        db.execute("update files set expires_at = ? where id = ?", (int(time.time()) - 1, soon["id"]))
    assert _code(lambda: files.get("bob", soon["id"])) == (404, "file_not_found")
    assert files.sweep() == 1 and not (files.directory / soon["id"]).exists()

    store = documents.stores.create("alice", "old", None, None, 1)
    documents.stores.searchable("alice", store)
    with documents.db.transaction() as db:
        db.execute("update stores set last_active_at = ? where id = ?", (int(time.time()) - 2 * 86_400, store))
    assert documents.stores.get("alice", store)["status"] == "expired"
    assert _code(lambda: documents.stores.searchable("alice", store)) == (400, "vector_store_expired")
    assert _code(lambda: documents.stores.get("bob", store)) == (404, "vector_store_not_found")
    files.delete("alice", kept["id"])


def test_a_dead_workers_lease_is_void_and_a_file_that_kept_killing_its_worker_fails(documents):
    upload = documents.files.create("carol", "c.txt", "assistants", b"some text to ingest", None)
    store = documents.stores.create("carol", "s", None, None, None)
    documents.store_files.add("carol", store, [{"file_id": upload["id"], "attributes": {}, "max_tokens": 800,
                                                "overlap": 400}])
    with documents.db.transaction() as db:  # held by a process of this machine that is gone, for 10 more minutes
        db.execute("update store_files set lease_until = ?, holder = ?, attempts = 1 where file_id = ?",
                   (time.time() + 600, f"{documents.ingest.holder.rsplit(':', 1)[0]}:999999999", upload["id"]))
    job = documents.ingest.claim()
    assert job is not None and job["file_id"] == upload["id"] and job["attempts"] == 2
    documents.ingest.run(job)
    assert documents.store_files.get("carol", store, upload["id"])["status"] == "completed"

    documents.store_files.add("carol", store, [{"file_id": upload["id"], "attributes": {}, "max_tokens": 800,
                                                "overlap": 400}])  # again: from the start
    with documents.db.transaction() as db:
        db.execute("update store_files set attempts = 3 where file_id = ?", (upload["id"],))
    documents.ingest.run(documents.ingest.claim())  # its fourth claim: three workers died on it
    record = documents.store_files.get("carol", store, upload["id"])
    assert record["status"] == "failed" and record["last_error"]["code"] == "server_error"
    assert json.dumps(record)  # plain JSON, as the API sends it


def test_a_cancelled_batch_leaves_nothing_to_ingest_and_attributes_change(documents):
    uploads = [documents.files.create("dave", f"{n}.md", "assistants", f"# {n}".encode(), None) for n in "ab"]
    store = documents.stores.create("dave", "s", None, None, None)
    entries = [{"file_id": u["id"], "attributes": {"n": i}, "max_tokens": 800, "overlap": 400}
               for i, u in enumerate(uploads)]
    batch = documents.store_files.add("dave", store, entries, batch=True)
    assert documents.store_files.batch("dave", store, batch)["status"] == "in_progress"
    cancelled = documents.store_files.cancel("dave", store, batch)
    assert cancelled["status"] == "cancelled" and cancelled["file_counts"]["cancelled"] == 2
    assert documents.ingest.claim() is None  # nothing left in progress
    changed = documents.store_files.update("dave", store, uploads[0]["id"], {"n": 7, "team": "ops"})
    assert changed["attributes"] == {"n": 7, "team": "ops"} and changed["status"] == "cancelled"
    assert _code(lambda: documents.store_files.batch("erin", store, batch)) == (404, "vector_store_not_found")
