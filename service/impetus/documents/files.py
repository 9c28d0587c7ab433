"""Uploaded files (/v1/files): bytes in the data dir, records in the database, each the key's own.

An upload's bytes go to `<documents>/files/<id>` (written whole, then renamed)
before its record exists, and its text is extracted at upload for the
purposes a vector store reads (`assistants`, `user_data`), so an unsupported
or empty file is a 400 there and then, not a failure later. Limits: each file
at most `file_max_bytes` (413), and a key's files together at most
`file_quota_bytes` (429 `storage_quota_exceeded`). Another key's file is a 404,
never a 403: ids do not leak. A file past its `expires_at` is gone.

Deleting a file deletes it from every vector store it is in (its chunks and
vectors too): a team server forgets what its owner deleted.
"""

from __future__ import annotations

import os
from pathlib import Path

from impetus.documents.db import Database, new_id, now, page
from impetus.documents.extract import extract
from impetus.web import APIError

SEARCHABLE = ("assistants", "user_data")
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MADE_HERE = ("batch_output",)  # a batch's output and error files (api.batch_runner), never uploaded


def file_object(row) -> dict:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "expires_at": row["expires_at"], "filename": row["filename"], "purpose": row["purpose"],
            "status": "processed", "status_details": None}


def not_found(file_id: str, param: str = "file_id") -> APIError:
    return APIError(404, f"No such File object: {file_id}", param=param, code="file_not_found")


class Files:
    def __init__(self, db: Database, directory: Path, max_bytes: int, quota_bytes: int):
        self.db, self.directory = db, directory
        self.max_bytes, self.quota_bytes = max_bytes, quota_bytes
        directory.mkdir(parents=True, exist_ok=True)

    def create(self, owner: str, filename: str, purpose: str, data: bytes, expires_after_s: int | None) -> dict:
        """`purpose` batch_output: a file the server made (a batch's answers), held to neither the upload
        limit nor the quota (a batch whose answers did not fit would never end); it counts toward the
        quota of the key's next uploads."""
        if len(data) > self.max_bytes and purpose not in MADE_HERE:
            raise APIError(413, f"The file '{filename}' is {len(data)} bytes; files may be at most "
                                f"{self.max_bytes} bytes.", param="file", code="file_too_large")
        text = extract(filename, data) if purpose in SEARCHABLE else None
        file_id = new_id("file-")
        path = self.directory / file_id
        temporary = path.with_suffix(".part")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        created = now()
        try:
            with self.db.transaction() as db:
                used = db.execute("select coalesce(sum(bytes), 0) from files where owner = ?", (owner,)).fetchone()[0]
                if used + len(data) > self.quota_bytes and purpose not in MADE_HERE:
                    raise APIError(429, f"This key's files would take {used + len(data)} bytes; its quota is "
                                        f"{self.quota_bytes} bytes. Delete files to make room.", param="file",
                                   code="storage_quota_exceeded")
                db.execute("insert into files values (?, ?, ?, ?, ?, ?, ?, ?)",
                           (file_id, owner, filename, purpose, len(data), created,
                            created + expires_after_s if expires_after_s else None, text))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return self.get(owner, file_id)

    def row(self, owner: str, file_id: str, param: str = "file_id"):
        with self.db.connect() as db:
            row = db.execute("select * from files where id = ? and owner = ?", (file_id, owner)).fetchone()
        if row is None or (row["expires_at"] is not None and row["expires_at"] <= now()):
            raise not_found(file_id, param)
        return row

    def get(self, owner: str, file_id: str) -> dict:
        return file_object(self.row(owner, file_id))

    def content(self, owner: str, file_id: str) -> bytes:
        self.row(owner, file_id)
        return (self.directory / file_id).read_bytes()

    def list(self, owner: str, purpose: str | None, limit: int, order: str, after: str | None) -> tuple[list, bool]:
        where, args = "owner = ? and (expires_at is null or expires_at > ?)", [owner, now()]
        if purpose:
            where += " and purpose = ?"
            args.append(purpose)
        mark = self.row(owner, after, "after") if after else None
        with self.db.connect() as db:
            rows, more = page(db, "files", where, args, order, (mark["created_at"], mark["id"]) if mark else None,
                              None, limit)
        return [file_object(r) for r in rows], more

    def delete(self, owner: str, file_id: str) -> dict:
        self.row(owner, file_id)
        self._remove(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    def sweep(self) -> int:
        """Delete the files past their expiry (the ingest loop calls it now and then)."""
        with self.db.connect() as db:
            gone = [r[0] for r in db.execute("select id from files where expires_at is not null and expires_at <= ?",
                                              (now(),))]
        for file_id in gone:
            self._remove(file_id)
        return len(gone)

    def _remove(self, file_id: str) -> None:
        with self.db.transaction() as db:
            stores = [r[0] for r in db.execute("select store_id from store_files where file_id = ?", (file_id,))]
            db.execute("delete from chunks where file_id = ?", (file_id,))
            db.execute("delete from store_files where file_id = ?", (file_id,))
            db.executemany("update stores set version = version + 1 where id = ?", [(s,) for s in stores])
            db.execute("delete from files where id = ?", (file_id,))
        (self.directory / file_id).unlink(missing_ok=True)
