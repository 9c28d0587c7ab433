"""Files in a vector store, and file batches: what ingest.py works through.

Adding a file makes its record `in_progress` with its chunking and
attributes; ingest.py turns it `completed` (its chunks and the status in one
transaction) or `failed` with OpenAI's `last_error`. Adding a file that is
already in the store starts it again. A batch is its files' records under one
id: its status is theirs (in_progress while any is; cancelled once cancelled,
which cancels the ones not done). Removing a file from a store removes its
chunks at once.

What it must not do: chunk or embed (ingest.py), or read another key's
store (every call names the owner).
"""

from __future__ import annotations

import json

from impetus.documents.db import Database, new_id, now, page
from impetus.documents.files import Files
from impetus.documents.stores import Stores, counts
from impetus.web import APIError


def file_in_store_object(row) -> dict:
    return {"id": row["file_id"], "object": "vector_store.file", "usage_bytes": row["usage_bytes"],
            "created_at": row["created_at"], "vector_store_id": row["store_id"], "status": row["status"],
            "last_error": json.loads(row["last_error"]) if row["last_error"] else None,
            "chunking_strategy": {"type": "static", "static": {"max_chunk_size_tokens": row["max_tokens"],
                                                                "chunk_overlap_tokens": row["overlap"]}},
            "attributes": json.loads(row["attributes"])}


def batch_object(db, row) -> dict:
    file_counts = counts(db, "store_id = ? and batch_id = ?", (row["store_id"], row["id"]))
    status = "cancelled" if row["cancelled"] else "in_progress" if file_counts["in_progress"] else \
        "failed" if file_counts["failed"] and not file_counts["completed"] else "completed"
    return {"id": row["id"], "object": "vector_store.files_batch", "created_at": row["created_at"],
            "vector_store_id": row["store_id"], "status": status, "file_counts": file_counts}


def not_in_store(file_id: str, store_id: str) -> APIError:
    return APIError(404, f"No file {file_id} in vector store {store_id}.", param="file_id", code="file_not_found")


class StoreFiles:
    def __init__(self, db: Database, files: Files, stores: Stores):
        self.db, self.files, self.stores = db, files, stores

    def add(self, owner: str, store_id: str, entries: list[dict], batch: bool = False) -> str | None:
        """Each entry: file_id, attributes, max_tokens, overlap. Files are checked first, all or none."""
        for index, entry in enumerate(entries):
            self.files.row(owner, entry["file_id"], f"file_ids[{index}]" if batch else "file_id")
        batch_id, created = (new_id("vsfb_") if batch else None), now()
        with self.db.transaction() as db:
            self.stores.row(db, owner, store_id)
            if batch_id:
                db.execute("insert into batches values (?, ?, ?, ?, 0)", (batch_id, store_id, owner, created))
            for entry in entries:
                db.execute("delete from chunks where store_id = ? and file_id = ?", (store_id, entry["file_id"]))
                db.execute("insert or replace into store_files (store_id, file_id, owner, status, attributes, "
                           "max_tokens, overlap, created_at, batch_id) values (?, ?, ?, 'in_progress', ?, ?, ?, ?, ?)",
                           (store_id, entry["file_id"], owner, json.dumps(entry.get("attributes") or {}),
                            entry["max_tokens"], entry["overlap"], created, batch_id))
            db.execute("update stores set version = version + 1 where id = ?", (store_id,))
        return batch_id

    def _row(self, db, owner: str, store_id: str, file_id: str):
        self.stores.row(db, owner, store_id)
        row = db.execute("select * from store_files where store_id = ? and file_id = ?", (store_id, file_id)).fetchone()
        if row is None:
            raise not_in_store(file_id, store_id)
        return row

    def get(self, owner: str, store_id: str, file_id: str) -> dict:
        with self.db.connect() as db:
            return file_in_store_object(self._row(db, owner, store_id, file_id))

    def list(self, owner: str, store_id: str, status: str | None, limit: int, order: str, after: str | None,
             before: str | None, batch_id: str | None = None) -> tuple[list, bool]:
        with self.db.connect() as db:
            self.stores.row(db, owner, store_id)
            where, args = "store_id = ?", [store_id]
            if status:
                where += " and status = ?"
                args.append(status)
            if batch_id:
                where += " and batch_id = ?"
                args.append(batch_id)
            marks = [(m["created_at"], m["file_id"]) if m else None for m in
                     (self._row(db, owner, store_id, after) if after else None,
                      self._row(db, owner, store_id, before) if before else None)]
            rows, more = page(db, "store_files", where, args, order, *marks, limit, id_column="file_id")
            return [file_in_store_object(r) for r in rows], more

    def update(self, owner: str, store_id: str, file_id: str, attributes: dict | None) -> dict:
        with self.db.transaction() as db:
            self._row(db, owner, store_id, file_id)
            db.execute("update store_files set attributes = ? where store_id = ? and file_id = ?",
                       (json.dumps(attributes or {}), store_id, file_id))
        return self.get(owner, store_id, file_id)

    def delete(self, owner: str, store_id: str, file_id: str) -> dict:
        with self.db.transaction() as db:
            self._row(db, owner, store_id, file_id)
            db.execute("delete from chunks where store_id = ? and file_id = ?", (store_id, file_id))
            db.execute("delete from store_files where store_id = ? and file_id = ?", (store_id, file_id))
            db.execute("update stores set version = version + 1 where id = ?", (store_id,))
        return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    def content(self, owner: str, store_id: str, file_id: str) -> list[dict]:
        with self.db.connect() as db:
            self._row(db, owner, store_id, file_id)
            texts = db.execute("select text from chunks where store_id = ? and file_id = ? order by seq",
                               (store_id, file_id)).fetchall()
        return [{"type": "text", "text": t[0]} for t in texts]

    # -- batches -------------------------------------------------------------------

    def _batch(self, db, owner: str, store_id: str, batch_id: str):
        self.stores.row(db, owner, store_id)
        row = db.execute("select * from batches where id = ? and store_id = ?", (batch_id, store_id)).fetchone()
        if row is None:
            raise APIError(404, f"No such file batch: {batch_id}", param="batch_id", code="file_batch_not_found")
        return row

    def batch(self, owner: str, store_id: str, batch_id: str) -> dict:
        with self.db.connect() as db:
            return batch_object(db, self._batch(db, owner, store_id, batch_id))

    def cancel(self, owner: str, store_id: str, batch_id: str) -> dict:
        with self.db.transaction() as db:
            self._batch(db, owner, store_id, batch_id)
            db.execute("update batches set cancelled = 1 where id = ?", (batch_id,))
            db.execute("update store_files set status = 'cancelled' where batch_id = ? and status = 'in_progress'",
                       (batch_id,))
        return self.batch(owner, store_id, batch_id)

    def batch_files(self, owner: str, store_id: str, batch_id: str, **listing) -> tuple[list, bool]:
        with self.db.connect() as db:
            self._batch(db, owner, store_id, batch_id)
        return self.list(owner, store_id, batch_id=batch_id, **listing)
