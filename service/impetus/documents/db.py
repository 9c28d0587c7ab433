"""The documents' database: one SQLite file in the data dir, shared by every worker.

Why SQLite, measured (benchmarks/README.md, "Choosing the documents store"):
at 100,000 chunks of 384 dimensions, exact search over the vectors held as one
NumPy matrix takes 7 ms a query (recall@10 1.0) and FTS5's BM25 3.7 ms;
LanceDB took 164 ms exact (IVF_PQ 4 ms, but recall@10 0.13 with its defaults
and 47 s to build the index); sqlite-vec needs a Python whose sqlite3 loads
extensions, which this one (and python.org's builds) may not. SQLite is in
every Python, is one file in the data dir (no service to install), and its
write-ahead log keeps the database whole through a kill -9: a file's chunks
go in with its status in one transaction, so a half-ingested file is never
searched.

Layout (ids are OpenAI's: file-..., vs_..., vsfb_...):
  files        an upload: owner (the key's hash), name, purpose, bytes, its text
  stores       a vector store; `version` moves with its chunks (search.py's cache key)
  store_files  a file in a store: status, attributes, chunking, the ingest lease
  batches      a file batch
  chunks       a chunk's text and vector (float16: recall@10 stayed 1.0); FTS5 over the text and the
               store's id, so a keyword search intersects with one store's postings instead of
               ranking every store's matches (380 ms -> a few ms for a small store beside 100k chunks)

What it must not do: decide who may see what (files.py and stores.py filter by owner).
"""

from __future__ import annotations

import secrets
import sqlite3
import string
import time
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
create table if not exists files(
  id text primary key, owner text not null, filename text not null, purpose text not null,
  bytes integer not null, created_at integer not null, expires_at integer, text text);
create index if not exists files_owner on files(owner, created_at);
create table if not exists stores(
  id text primary key, owner text not null, name text, description text, metadata text not null,
  created_at integer not null, last_active_at integer not null, expires_days integer,
  version integer not null default 0);
create index if not exists stores_owner on stores(owner, created_at);
create table if not exists store_files(
  store_id text not null, file_id text not null, owner text not null, status text not null,
  last_error text, attributes text not null, max_tokens integer not null, overlap integer not null,
  usage_bytes integer not null default 0, created_at integer not null, batch_id text,
  lease_until real not null default 0, attempts integer not null default 0, holder text,
  primary key(store_id, file_id));
create index if not exists store_files_work on store_files(status, lease_until);
create table if not exists batches(
  id text primary key, store_id text not null, owner text not null, created_at integer not null,
  cancelled integer not null default 0);
create table if not exists chunks(
  id integer primary key, store_id text not null, file_id text not null, seq integer not null,
  text text not null, vector blob not null);
create index if not exists chunks_file on chunks(store_id, file_id);
create virtual table if not exists chunks_fts using fts5(store_id, text, content='chunks', content_rowid='id');
create trigger if not exists chunks_added after insert on chunks begin
  insert into chunks_fts(rowid, store_id, text) values (new.id, new.store_id, new.text); end;
create trigger if not exists chunks_removed after delete on chunks begin
  insert into chunks_fts(chunks_fts, rowid, store_id, text) values ('delete', old.id, old.store_id, old.text); end;
"""
_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def now() -> int:
    return int(time.time())


class Database:
    """Connections to the documents' SQLite file: one a use (SQLite opens in
    microseconds), in WAL mode, waiting up to 10 s for another writer."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def connect(self):
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("pragma journal_mode=wal")
            db.execute("pragma synchronous=normal")  # WAL: durable at checkpoints, never corrupt
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self):
        """One write transaction (BEGIN IMMEDIATE: the write lock up front)."""
        with self.connect() as db:
            db.execute("begin immediate")
            try:
                yield db
            except BaseException:
                db.execute("rollback")
                raise
            db.execute("commit")


def page(db, table: str, where: str, args: list, order: str, after: tuple | None, before: tuple | None,
         limit: int, id_column: str = "id") -> tuple[list, bool]:
    """One page of `table`'s rows by (created_at, id), OpenAI's list parameters:
    `after` and `before` are the (created_at, id) of the rows they name."""
    desc = order == "desc"
    if after:
        where += f" and (created_at, {id_column}) {'<' if desc else '>'} (?, ?)"
        args = [*args, *after]
    if before:
        where += f" and (created_at, {id_column}) {'>' if desc else '<'} (?, ?)"
        args = [*args, *before]
    direction = "desc" if desc else "asc"
    rows = db.execute(f"select * from {table} where {where} order by created_at {direction}, {id_column} {direction} "
                      "limit ?", (*args, limit + 1)).fetchall()
    return rows[:limit], len(rows) > limit
