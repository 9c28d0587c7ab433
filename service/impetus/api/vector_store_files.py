"""/v1/vector_stores/{id}/files and /file_batches: files into a store, and out.

Adding files (`add_files`, also for a store created with `file_ids`) checks
each file is the key's, counts the tokens the embedding model will read for
it (its chunks, as documents.ingest will embed them), refuses with the key's
budget (429) before anything is queued, charges those tokens as the key's
prompt tokens to the embedding model, and wakes the worker's ingest loop.
A retrieve answers `openai-poll-after-ms`, so the SDK's `*_and_poll` looks
again soon.
"""

from __future__ import annotations

from impetus.api.documents_schemas import FileBatchCreate, VectorStoreFileCreate, VectorStoreFileUpdate, sizes
from impetus.api.listing import listing, page
from impetus.api.validation import parse
from impetus.documents.stores import STATUSES
from impetus.web import bad_request

POLL_AFTER_MS = "250"


def add_files(documents, metrics, req, resp, store_id: str, entries: list[VectorStoreFileCreate],
              batch: bool = False) -> str | None:
    account = req.context.account
    rows, tokens = [], 0
    for index, entry in enumerate(entries):
        file = documents.files.row(account.owner, entry.file_id, f"file_ids[{index}]" if batch else "file_id")
        max_tokens, overlap = sizes(entry.chunking_strategy)
        if file["text"] is not None:
            tokens += documents.ingest.cost(file["text"], max_tokens, overlap)
        rows.append({"file_id": entry.file_id, "attributes": entry.attributes, "max_tokens": max_tokens,
                     "overlap": overlap})
    account.admit(resp)  # the key's token budget: 429 when it is spent
    batch_id = documents.store_files.add(account.owner, store_id, rows, batch=batch)
    account.charge(documents.model_name, tokens, 0)
    metrics.prompt_tokens.labels(documents.model_name, account.name).inc(tokens)
    documents.ingest.wake()
    return batch_id


def _status_filter(req) -> str | None:
    status = req.get_param("filter")
    if status is not None and status not in STATUSES:
        raise bad_request(f"filter must be one of {', '.join(STATUSES)}.", param="filter")
    return status


class VectorStoreFilesResource:
    def __init__(self, documents, metrics):
        self.documents, self.metrics = documents, metrics

    def on_post(self, req, resp, store_id):
        body = parse(VectorStoreFileCreate, req.context.json)
        add_files(self.documents, self.metrics, req, resp, store_id, [body])
        resp.media = self.documents.store_files.get(req.context.account.owner, store_id, body.file_id)

    def on_get(self, req, resp, store_id):
        data, more = self.documents.store_files.list(req.context.account.owner, store_id, _status_filter(req),
                                                     **listing(req))
        resp.media = page(data, more)


class VectorStoreFileResource:
    def __init__(self, documents):
        self.documents = documents

    def on_get(self, req, resp, store_id, file_id):
        resp.media = self.documents.store_files.get(req.context.account.owner, store_id, file_id)
        resp.set_header("openai-poll-after-ms", POLL_AFTER_MS)

    def on_post(self, req, resp, store_id, file_id):
        body = parse(VectorStoreFileUpdate, req.context.json)
        resp.media = self.documents.store_files.update(req.context.account.owner, store_id, file_id, body.attributes)

    def on_delete(self, req, resp, store_id, file_id):
        resp.media = self.documents.store_files.delete(req.context.account.owner, store_id, file_id)


class VectorStoreFileContentResource:
    def __init__(self, documents):
        self.documents = documents

    def on_get(self, req, resp, store_id, file_id):
        data = self.documents.store_files.content(req.context.account.owner, store_id, file_id)
        resp.media = {"object": "vector_store.file_content.page", "data": data, "has_more": False, "next_page": None}


class FileBatchesResource:
    def __init__(self, documents, metrics):
        self.documents, self.metrics = documents, metrics

    def on_post(self, req, resp, store_id):
        body = parse(FileBatchCreate, req.context.json)
        batch_id = add_files(self.documents, self.metrics, req, resp, store_id, body.entries(), batch=True)
        resp.media = self.documents.store_files.batch(req.context.account.owner, store_id, batch_id)


class FileBatchResource:
    def __init__(self, documents):
        self.documents = documents

    def on_get(self, req, resp, store_id, batch_id):
        resp.media = self.documents.store_files.batch(req.context.account.owner, store_id, batch_id)
        resp.set_header("openai-poll-after-ms", POLL_AFTER_MS)


class FileBatchCancelResource:
    bodyless = True  # the SDKs send no body

    def __init__(self, documents):
        self.documents = documents

    def on_post(self, req, resp, store_id, batch_id):
        resp.media = self.documents.store_files.cancel(req.context.account.owner, store_id, batch_id)


class FileBatchFilesResource:
    def __init__(self, documents):
        self.documents = documents

    def on_get(self, req, resp, store_id, batch_id):
        data, more = self.documents.store_files.batch_files(req.context.account.owner, store_id, batch_id,
                                                            status=_status_filter(req), **listing(req))
        resp.media = page(data, more)
