"""/v1/vector_stores: create (with files), list, retrieve, update, delete, and search.

Search (`/v1/vector_stores/{id}/search`) is documents.search's hybrid of
exact vectors and BM25 over the store's completed files, through the same
face OpenAI's has: `query` (one or several), `filters`, `max_num_results`,
`ranking_options`, `rewrite_query` (accepted; the query is used as sent). It
charges the query's tokens to the key like an embeddings request.
"""

from __future__ import annotations

from impetus.api.documents_schemas import (
    VectorStoreCreate,
    VectorStoreFileCreate,
    VectorStoreSearch,
    VectorStoreUpdate,
)
from impetus.api.listing import listing, page
from impetus.api.validation import parse
from impetus.api.vector_store_files import add_files


class VectorStoresResource:
    def __init__(self, documents, metrics):
        self.documents, self.metrics = documents, metrics

    def on_post(self, req, resp):
        body = parse(VectorStoreCreate, req.context.json)
        owner = req.context.account.owner
        for index, file_id in enumerate(body.file_ids):  # all files are the key's before the store exists
            self.documents.files.row(owner, file_id, f"file_ids[{index}]")
        store_id = self.documents.stores.create(owner, body.name, body.description, body.metadata,
                                                body.expires_after.days if body.expires_after else None)
        if body.file_ids:
            add_files(self.documents, self.metrics, req, resp, store_id,
                      [VectorStoreFileCreate(file_id=f, chunking_strategy=body.chunking_strategy)
                       for f in body.file_ids], batch=len(body.file_ids) > 1)
        resp.media = self.documents.stores.get(owner, store_id)

    def on_get(self, req, resp):
        data, more = self.documents.stores.list(req.context.account.owner, **listing(req))
        resp.media = page(data, more)


class VectorStoreResource:
    def __init__(self, documents):
        self.documents = documents

    def on_get(self, req, resp, store_id):
        resp.media = self.documents.stores.get(req.context.account.owner, store_id)

    def on_post(self, req, resp, store_id):
        body = parse(VectorStoreUpdate, req.context.json)
        fields = {}
        if "name" in body.model_fields_set:
            fields["name"] = body.name
        if "expires_after" in body.model_fields_set:
            fields["expires_days"] = body.expires_after.days if body.expires_after else None
        if "metadata" in body.model_fields_set:
            fields["metadata"] = body.metadata
        resp.media = self.documents.stores.update(req.context.account.owner, store_id, fields)

    def on_delete(self, req, resp, store_id):
        resp.media = self.documents.stores.delete(req.context.account.owner, store_id)


class VectorStoreSearchResource:
    def __init__(self, documents, metrics):
        self.documents, self.metrics = documents, metrics

    def on_post(self, req, resp, store_id):
        body = parse(VectorStoreSearch, req.context.json)
        account = req.context.account
        self.documents.stores.searchable(account.owner, store_id)
        account.admit(resp)
        ranking = body.ranking_options
        data, tokens = self.documents.search.search(
            [store_id], body.queries(), body.filters.model_dump() if body.filters else None, body.max_num_results,
            ranking.ranker if ranking else "auto", ranking.score_threshold if ranking else 0.0)
        account.charge(self.documents.model_name, tokens, 0)
        self.metrics.prompt_tokens.labels(self.documents.model_name, account.name).inc(tokens)
        resp.media = {"object": "vector_store.search_results.page", "search_query": body.query, "data": data,
                      "has_more": False, "next_page": None}
