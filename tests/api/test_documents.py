"""Documents (impetus.documents: /v1/files, /v1/vector_stores) through nginx with two keys, as the
openai SDK calls them: a PDF and a Markdown file uploaded, ingested and searched (hybrid, filters),
their content read back, another key seeing none of it, deleting removing the vectors, file
batches, and bad input in OpenAI's shape."""

from __future__ import annotations

import io
import pydoc_data.topics

import httpx
import openai
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow

SECRET = "The lighthouse keeper's code word for a storm is AMBERGRIS-42."
TOPICS = pydoc_data.topics.topics


def pdf_with(sentence: str) -> bytes:
    """A three-page PDF (fpdf2): Python's own documentation of `with`, the sentence on page two."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    for text in (TOPICS["with"][:2500], TOPICS["lambda"][:800] + "\n\n" + sentence, TOPICS["try"][:2500]):
        pdf.add_page()
        pdf.multi_cell(0, 5, text.encode("latin-1", "replace").decode("latin-1"))
    return bytes(pdf.output())


@pytest.fixture(scope="module")
def proxy(gateway_proxy):
    return gateway_proxy


@pytest.fixture(scope="module")
def keys(redis_server):
    store = KeyStore(redis_server.client())
    return store.create("documents-owner")[0], store.create("documents-other")[0]


@pytest.fixture(scope="module")
def owner(proxy, keys):
    return openai.OpenAI(base_url=f"{proxy}/v1", api_key=keys[0], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def other(proxy, keys):
    return openai.OpenAI(base_url=f"{proxy}/v1", api_key=keys[1], max_retries=0, timeout=120)


def test_a_pdf_and_markdown_are_ingested_searched_kept_apart_and_deleted(owner, other):
    pdf_bytes = pdf_with(SECRET)
    pdf = owner.files.create(file=("runbook.pdf", pdf_bytes), purpose="assistants")
    assert pdf.bytes == len(pdf_bytes) and pdf.filename == "runbook.pdf" and pdf.purpose == "assistants"
    store = owner.vector_stores.create(name="runbooks", metadata={"team": "ops"})
    markdown = ("# Deploys\n\n" + TOPICS["import"][:3000]).encode()
    md = owner.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=("deploys.md", markdown))
    assert md.status == "completed", md.last_error
    added = owner.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=pdf.id,
                                                      attributes={"kind": "runbook", "pages": 3})
    assert added.status == "completed" and added.chunking_strategy.static.max_chunk_size_tokens == 800
    store = owner.vector_stores.retrieve(store.id)
    assert store.status == "completed" and store.file_counts.completed == 2 and store.usage_bytes > 0

    found = owner.vector_stores.search(store.id, query="What is the code word the lighthouse keeper uses for a storm?")
    first = found.data[0]
    assert first.file_id == pdf.id and first.filename == "runbook.pdf" and "AMBERGRIS-42" in first.content[0].text
    assert first.attributes == {"kind": "runbook", "pages": 3} and 0 < first.score <= 1
    by_words = owner.vector_stores.search(store.id, query="AMBERGRIS", ranking_options={"ranker": "none"})
    assert by_words.data  # vectors alone still rank every chunk; BM25 is what finds the rare word first
    only_docs = owner.vector_stores.search(store.id, query="storm code word", filters={
        "type": "and", "filters": [{"type": "eq", "key": "kind", "value": "runbook"},
                                   {"type": "gte", "key": "pages", "value": 2}]})
    assert {r.file_id for r in only_docs.data} == {pdf.id}
    assert not owner.vector_stores.search(store.id, query="storm", filters={
        "type": "in", "key": "kind", "value": ["guide"]}).data

    assert owner.files.content(pdf.id).read() == pdf_bytes
    pieces = owner.vector_stores.files.content(file_id=pdf.id, vector_store_id=store.id)
    assert any("AMBERGRIS-42" in piece.text for piece in pieces)

    # The other key sees nothing: every id is a 404, as if it did not exist.
    for call in (lambda: other.vector_stores.retrieve(store.id), lambda: other.files.retrieve(pdf.id),
                 lambda: other.vector_stores.search(store.id, query="storm"),
                 lambda: other.files.content(pdf.id),
                 lambda: other.vector_stores.files.create(vector_store_id=store.id, file_id=pdf.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert pdf.id not in {f.id for f in other.files.list()} and store.id not in {s.id for s in other.vector_stores.list()}

    # Deleting the file deletes its vectors: the store no longer finds it.
    assert owner.files.delete(pdf.id).deleted
    after = owner.vector_stores.search(store.id, query="What is the code word the lighthouse keeper uses?")
    assert pdf.id not in {r.file_id for r in after.data}
    assert owner.vector_stores.retrieve(store.id).file_counts.total == 1
    assert owner.vector_stores.delete(store.id).deleted
    with pytest.raises(openai.NotFoundError):
        owner.vector_stores.retrieve(store.id)


def test_ingestion_is_counted_for_prometheus(gateway_server, owner):
    def completed() -> float:
        text = httpx.get(f"{gateway_server}/metrics", timeout=30).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('impetus_documents_files_total{status="completed"}'))

    before = completed()
    store = owner.vector_stores.create(name="counted")
    owner.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=("a.md", b"# A\n\nCounted."))
    assert completed() == before + 1
    owner.vector_stores.delete(store.id)


def test_file_batches_are_ingested_together_and_listed(owner):
    store = owner.vector_stores.create(name="batch")
    uploads = [owner.files.create(file=(f"{name}.txt", TOPICS[name][:4000].encode()), purpose="assistants")
               for name in ("for", "while", "if")]
    batch = owner.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=[f.id for f in uploads],
        chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50}})
    assert batch.status == "completed" and batch.file_counts.completed == 3
    listed = owner.vector_stores.file_batches.list_files(batch_id=batch.id, vector_store_id=store.id)
    assert {f.id for f in listed} == {f.id for f in uploads}
    chunks = owner.vector_stores.files.content(file_id=uploads[0].id, vector_store_id=store.id)
    assert len(list(chunks)) > 2  # 200-token chunks of a 4,000-character text
    found = owner.vector_stores.search(store.id, query="while loop condition", max_num_results=3)
    assert len(found.data) == 3 and found.data[0].file_id == uploads[1].id
    page = owner.vector_stores.files.list(vector_store_id=store.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    owner.vector_stores.delete(store.id)


def test_bad_input_is_a_4xx_in_openais_shape(proxy, keys, owner):
    headers = {"Authorization": f"Bearer {keys[0]}"}

    def upload(name: str, data: bytes, purpose: str = "assistants") -> httpx.Response:
        return httpx.post(f"{proxy}/v1/files", headers=headers, files={"file": (name, io.BytesIO(data))},
                          data={"purpose": purpose}, timeout=60)

    store = owner.vector_stores.create(name="bad")
    cases = [
        (upload("model.bin", b"\x00\x01binary"), 400, "unsupported_file"),
        (upload("empty.md", b""), 400, "empty_file"),
        (upload("broken.pdf", b"%PDF-1.4 not really"), 400, "invalid_file"),
        (upload("notes.txt", b"hi", purpose="homework"), 400, None),
        (upload("huge.txt", b"a" * (30 * 1024 * 1024 + 1)), 413, "file_too_large"),
        (httpx.post(f"{proxy}/v1/vector_stores/{store.id}/search", headers=headers, timeout=30,
                    json={"query": "x", "filters": {"type": "in", "key": "k", "value": "not a list"}}), 400, None),
        (httpx.post(f"{proxy}/v1/vector_stores/{store.id}/files", headers=headers, timeout=30,
                    json={"file_id": "file-nope"}), 404, "file_not_found"),
        (httpx.post(f"{proxy}/v1/vector_stores", headers=headers, timeout=30, json={"chunking_strategy": {
            "type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 150}}}), 400, None),
        (httpx.get(f"{proxy}/v1/vector_stores/vs_nope", headers=headers, timeout=30), 404, "vector_store_not_found"),
        (httpx.get(f"{proxy}/v1/files?limit=1000", headers=headers, timeout=30), 400, None),
    ]
    for index, (answer, status, code) in enumerate(cases):
        assert answer.status_code == status, (index, answer.text)
        error = answer.json()["error"]
        assert error["message"] and error["type"], (index, error)
        assert code is None or error["code"] == code, (index, error)
    owner.vector_stores.delete(store.id)


@pytest.fixture(scope="module")
def runbooks(owner):
    """A store with the PDF in 200-token chunks (so that two excerpts are a short prompt)."""
    pdf = owner.files.create(file=("runbook.pdf", pdf_with(SECRET)), purpose="assistants")
    store = owner.vector_stores.create(name="answers", file_ids=[pdf.id], chunking_strategy={
        "type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50}})
    assert owner.vector_stores.files.poll(pdf.id, vector_store_id=store.id).status == "completed"
    yield store, pdf
    owner.vector_stores.delete(store.id)
    owner.files.delete(pdf.id)


def test_a_forced_file_search_streams_its_call_and_an_answer_with_a_citation(owner, other, runbooks):
    """Streamed here; the Agents SDK's test below reads a whole one."""
    store, pdf = runbooks
    request = {"model": DEFAULT_MODEL, "input": "What is the lighthouse keeper's code word for a storm?",
               "tools": [{"type": "file_search", "vector_store_ids": [store.id], "max_num_results": 2}],
               "tool_choice": {"type": "file_search"}, "include": ["file_search_call.results"],
               "max_output_tokens": 48, "store": False}
    events = list(owner.responses.create(**request, stream=True))
    kinds = [e.type for e in events]
    for kind in ("response.file_search_call.in_progress", "response.file_search_call.searching",
                 "response.file_search_call.completed", "response.output_text.annotation.added"):
        assert kind in kinds, kinds
    assert kinds.index("response.file_search_call.completed") < kinds.index("response.output_text.delta")
    answer = events[-1].response
    call, message = answer.output[0], answer.output[-1]
    assert call.type == "file_search_call" and call.status == "completed" and call.queries
    assert call.results[0].file_id == pdf.id and "AMBERGRIS-42" in call.results[0].text
    assert message.type == "message" and message.content[0].text
    assert message.content[0].text == "".join(e.delta for e in events if e.type == "response.output_text.delta")
    citation = message.content[0].annotations[0]
    assert citation.type == "file_citation" and citation.file_id == pdf.id and citation.filename == "runbook.pdf"
    assert answer.usage.input_tokens > 300  # both rounds: the question, then the excerpts

    with pytest.raises(openai.NotFoundError):  # another key's store, named in the tool
        other.responses.create(**request)


def test_the_agents_sdk_file_search_tool(proxy, keys, runbooks):
    from agents import Agent, FileSearchTool, ModelSettings, OpenAIResponsesModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)  # nothing goes to OpenAI's tracing endpoint
    store, pdf = runbooks
    client = openai.AsyncOpenAI(base_url=f"{proxy}/v1", api_key=keys[0], max_retries=0, timeout=120)
    agent = Agent(name="runbooks", instructions="Answer from the user's files, briefly.",
                  tools=[FileSearchTool(vector_store_ids=[store.id], max_num_results=2, include_search_results=True)],
                  model=OpenAIResponsesModel(DEFAULT_MODEL, client),
                  model_settings=ModelSettings(tool_choice="file_search", temperature=0, max_tokens=300))
    result = Runner.run_sync(agent, "What is the lighthouse keeper's code word for a storm?", max_turns=2)
    searches = [item.raw_item for item in result.new_items if item.type == "tool_call_item"]
    assert [s.type for s in searches] == ["file_search_call"] and searches[0].results[0].file_id == pdf.id
    assert result.new_items[-1].type == "message_output_item" and result.final_output.strip()
