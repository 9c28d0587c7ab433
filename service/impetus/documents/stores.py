"""Vector stores (/v1/vector_stores): a key's named collections of files to search.

A store's `status` is `completed` once no file in it is `in_progress`, and
`expired` once it has been idle past `expires_after` (anchor `last_active_at`,
1 to 365 days): an expired store keeps its records but is not searched (400
`vector_store_expired`), as OpenAI's. Searching a store makes it active.
`usage_bytes` is its chunks' text and vectors. Deleting a store deletes its
chunks, its files' records in it and its batches, not the files themselves.

What it must not do: ingest (ingest.py) or search (search.py); files in a
store are store_files.py's.
"""

from __future__ import annotations

import json

from impetus.documents.db import Database, new_id, now, page
from impetus.web import APIError, bad_request

DAY = 86_400
STATUSES = ("in_progress", "completed", "failed", "cancelled")


def not_found(store_id: str, param: str = "vector_store_id") -> APIError:
    return APIError(404, f"No such vector store: {store_id}", param=param, code="vector_store_not_found")


def counts(db, where: str, args: tuple) -> dict:
    found = dict(db.execute(f"select status, count(*) from store_files where {where} group by status", args).fetchall())
    out = {status: found.get(status, 0) for status in STATUSES}
    out["total"] = sum(out.values())
    return out


def expires_at(row) -> int | None:
    return row["last_active_at"] + row["expires_days"] * DAY if row["expires_days"] else None


def store_object(db, row) -> dict:
    file_counts = counts(db, "store_id = ?", (row["id"],))
    usage = db.execute("select coalesce(sum(usage_bytes), 0) from store_files where store_id = ?",
                       (row["id"],)).fetchone()[0]
    expiry = expires_at(row)
    status = "expired" if expiry is not None and expiry <= now() else \
        "in_progress" if file_counts["in_progress"] else "completed"
    return {"id": row["id"], "object": "vector_store", "created_at": row["created_at"], "name": row["name"],
            "description": row["description"], "usage_bytes": usage, "file_counts": file_counts, "status": status,
            "expires_after": {"anchor": "last_active_at", "days": row["expires_days"]} if row["expires_days"] else None,
            "expires_at": expiry, "last_active_at": row["last_active_at"], "metadata": json.loads(row["metadata"])}


class Stores:
    def __init__(self, db: Database):
        self.db = db

    def row(self, db, owner: str, store_id: str, param: str = "vector_store_id"):
        row = db.execute("select * from stores where id = ? and owner = ?", (store_id, owner)).fetchone()
        if row is None:
            raise not_found(store_id, param)
        return row

    def create(self, owner: str, name: str | None, description: str | None, metadata: dict | None,
               expires_days: int | None) -> str:
        store_id, created = new_id("vs_"), now()
        with self.db.transaction() as db:
            db.execute("insert into stores (id, owner, name, description, metadata, created_at, last_active_at, "
                       "expires_days) values (?, ?, ?, ?, ?, ?, ?, ?)",
                       (store_id, owner, name, description, json.dumps(metadata or {}), created, created,
                        expires_days))
        return store_id

    def get(self, owner: str, store_id: str) -> dict:
        with self.db.connect() as db:
            return store_object(db, self.row(db, owner, store_id))

    def list(self, owner: str, limit: int, order: str, after: str | None, before: str | None) -> tuple[list, bool]:
        with self.db.connect() as db:
            marks = [(m["created_at"], m["id"]) if m else None for m in
                     (self.row(db, owner, after, "after") if after else None,
                      self.row(db, owner, before, "before") if before else None)]
            rows, more = page(db, "stores", "owner = ?", [owner], order, *marks, limit)
            return [store_object(db, r) for r in rows], more

    def update(self, owner: str, store_id: str, fields: dict) -> dict:
        """`fields`: name, expires_days (None: never) and metadata, as far as given."""
        with self.db.transaction() as db:
            self.row(db, owner, store_id)
            for column in ("name", "expires_days", "metadata"):
                if column in fields:
                    value = json.dumps(fields[column] or {}) if column == "metadata" else fields[column]
                    db.execute(f"update stores set {column} = ? where id = ?", (value, store_id))
        return self.get(owner, store_id)

    def delete(self, owner: str, store_id: str) -> dict:
        with self.db.transaction() as db:
            self.row(db, owner, store_id)
            for table in ("chunks", "store_files", "batches"):
                db.execute(f"delete from {table} where store_id = ?", (store_id,))
            db.execute("delete from stores where id = ?", (store_id,))
        return {"id": store_id, "object": "vector_store.deleted", "deleted": True}

    def searchable(self, owner: str, store_id: str, param: str = "vector_store_id") -> None:
        """A store this key may search now: its own, not expired; it becomes active."""
        with self.db.transaction() as db:
            row = self.row(db, owner, store_id, param)
            expiry = expires_at(row)
            if expiry is not None and expiry <= now():
                raise bad_request(f"The vector store {store_id} has expired; create a new one.", param=param,
                                  code="vector_store_expired")
            db.execute("update stores set last_active_at = ? where id = ?", (now(), store_id))
