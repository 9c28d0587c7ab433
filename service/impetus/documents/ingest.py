"""Files into vector stores, in the background, at batch priority, through crashes.

Every worker runs one loop (`Ingest.start`). It claims the oldest file in a
store that is `in_progress` and whose lease has run out (one UPDATE ...
RETURNING: two workers never claim the same), chunks its text, embeds the
chunks in groups of GROUP with the served embedding model, renewing its lease
of LEASE_S as it goes, and then writes the chunks, their vectors and the
`completed` status in one transaction. So:

- a kill -9 (of the worker, the server, the machine) mid-file leaves the file
  `in_progress` with no chunk searched; once its lease runs out another worker
  (or the restarted one) takes it again, from the start; on the same machine it
  does not wait for the lease: a holder (host:pid) that is no longer alive has
  lost it;
- a file that fails ATTEMPTS times is `failed` with `last_error` (OpenAI's
  `server_error`), and adding it again retries it;
- a file removed, re-added or cancelled meanwhile is dropped at its next group.

Batch priority: a group waits while a request's embeddings are waiting
(`EmbeddingHost.embed(background=True)`) and, while the chat engines have
work, up to YIELD_S before each group, so a document set fills idle capacity
and slows down, without stopping, under interactive load.

What it must not do: charge the key (the api charges the tokens when the file
is added, with the account at hand) or decide who owns what.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import numpy as np

from impetus.documents import chunking
from impetus.documents.db import Database
from impetus.engine.host import run_off_the_hub

log = logging.getLogger("impetus.documents")
HOST = socket.gethostname()

LEASE_S = 20.0
GROUP = 16  # chunks an embedding call
ATTEMPTS = 3
YIELD_S = 2.0
IDLE_S = 2.0  # between looks for work when there is none
SWEEP_S = 60.0


class Ingest:
    def __init__(self, db: Database, files, embeddings, model_name: str, busy, metrics):
        self.db, self.files, self.embeddings, self.model_name = db, files, embeddings, model_name
        self.busy = busy  # the chat engines have work
        self.metrics = metrics
        self._wake = threading.Event()
        self._started = False
        self.holder = f"{HOST}:{os.getpid()}"
        self.ingested = 0  # files completed by this worker (for the tests and /v1/status)

    def start(self) -> None:
        if not self._started:
            self.holder = f"{HOST}:{os.getpid()}"  # this process's (a Gunicorn worker makes its app after the fork)
            self._started = True
            threading.Thread(target=self._loop, name="impetus-ingest", daemon=True).start()

    def wake(self) -> None:
        self.start()
        self._wake.set()

    def cost(self, text: str, max_tokens: int, overlap: int) -> int:
        """The tokens the embedding model will read for this text (what the key is charged)."""
        model = self.embeddings.get(self.model_name)
        pieces = run_off_the_hub(lambda: [p for c in chunking.chunks(model, text, max_tokens, overlap)
                                          for p in chunking.pieces(model, c)])
        return sum(len(p) for p in pieces)

    def _loop(self) -> None:
        swept = 0.0
        while True:
            try:
                if time.monotonic() - swept > SWEEP_S:
                    swept = time.monotonic()
                    self.files.sweep()
                job = self.claim()
                if job is None:
                    self._wake.wait(IDLE_S)
                    self._wake.clear()
                    continue
                self.run(job)
            except Exception:  # the loop goes on; the job's lease runs out and it is tried again
                log.exception("ingest failed")
                time.sleep(IDLE_S)

    def claim(self):
        dead = self._dead_holders()
        with self.db.transaction() as db:
            return db.execute(
                "update store_files set lease_until = ?, attempts = attempts + 1, holder = ? where rowid = ("
                " select rowid from store_files where status = 'in_progress' and (lease_until < ?"
                f" or holder in ({','.join('?' * len(dead))})) order by created_at limit 1) returning *",
                (time.time() + LEASE_S, self.holder, time.time(), *dead)).fetchone()

    def _dead_holders(self) -> list[str]:
        """Holders on this machine whose process is gone (killed mid-file): their leases are void."""
        with self.db.connect() as db:
            holders = {r[0] for r in db.execute("select distinct holder from store_files where status = 'in_progress'"
                                                " and lease_until >= ? and holder like ?", (time.time(), f"{HOST}:%"))}
        return [h for h in holders if not _alive(int(h.rsplit(":", 1)[1]))]

    def _mine(self, db, job) -> bool:
        row = db.execute("select status, created_at, attempts from store_files where store_id = ? and file_id = ?",
                         (job["store_id"], job["file_id"])).fetchone()
        return row is not None and row["status"] == "in_progress" and row["created_at"] == job["created_at"] \
            and row["attempts"] == job["attempts"]

    def _renew(self, job) -> bool:
        with self.db.transaction() as db:
            if not self._mine(db, job):
                return False
            db.execute("update store_files set lease_until = ? where store_id = ? and file_id = ?",
                       (time.time() + LEASE_S, job["store_id"], job["file_id"]))
            return True

    def run(self, job) -> None:
        if job["attempts"] > ATTEMPTS:  # it was claimed and never finished: its worker died each time
            return self._fail(job, "server_error", f"Ingesting the file was interrupted {ATTEMPTS} times.")
        try:
            with self.db.connect() as db:
                row = db.execute("select text from files where id = ?", (job["file_id"],)).fetchone()
            if row is None or row["text"] is None:
                return self._fail(job, "invalid_file", "The file has no text to search (its purpose is not "
                                                       "assistants or user_data).")
            model = self.embeddings.get(self.model_name)
            pieces_of = run_off_the_hub(lambda: [
                (c, chunking.pieces(model, c)) for c in chunking.chunks(model, row["text"], job["max_tokens"],
                                                                       job["overlap"])])
            vectors = []
            for start in range(0, len(pieces_of), GROUP):
                if not self._renew(job):
                    return  # removed, re-added or cancelled meanwhile
                self._yield()
                group = pieces_of[start:start + GROUP]
                flat = self.embeddings.embed(model, [p for _, pieces in group for p in pieces], background=True)
                at = 0
                for _, pieces in group:
                    mean = flat[at:at + len(pieces)].mean(axis=0)
                    vectors.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
                    at += len(pieces)
            self._complete(job, [c for c, _ in pieces_of], vectors)
        except Exception as error:
            log.exception("ingesting %s into %s failed", job["file_id"], job["store_id"])
            if job["attempts"] >= ATTEMPTS:
                self._fail(job, "server_error", f"Ingesting the file failed {ATTEMPTS} times: {error}")
            else:
                with self.db.transaction() as db:
                    if self._mine(db, job):
                        db.execute("update store_files set lease_until = 0 where store_id = ? and file_id = ?",
                                   (job["store_id"], job["file_id"]))

    def _yield(self) -> None:
        waited = 0.0
        while self.busy() and waited < YIELD_S:
            time.sleep(0.1)
            waited += 0.1

    def _complete(self, job, chunks, vectors) -> None:
        store, file = job["store_id"], job["file_id"]
        rows = [(store, file, c.seq, c.text, np.asarray(v, dtype=np.float16).tobytes()) for c, v in zip(chunks, vectors)]
        usage = sum(len(r[3].encode()) + len(r[4]) for r in rows)
        with self.db.transaction() as db:
            if not self._mine(db, job):
                return
            db.execute("delete from chunks where store_id = ? and file_id = ?", (store, file))
            db.executemany("insert into chunks (store_id, file_id, seq, text, vector) values (?, ?, ?, ?, ?)", rows)
            db.execute("update store_files set status = 'completed', usage_bytes = ?, lease_until = 0, "
                       "last_error = null where store_id = ? and file_id = ?", (usage, store, file))
            db.execute("update stores set version = version + 1 where id = ?", (store,))
        self.ingested += 1
        self.metrics.documents_files.labels("completed").inc()
        self.metrics.documents_chunks.inc(len(rows))
        log.info("ingested %s into %s: %d chunks", file, store, len(rows))

    def _fail(self, job, code: str, message: str) -> None:
        self.metrics.documents_files.labels("failed").inc()
        with self.db.transaction() as db:
            if self._mine(db, job):
                db.execute("update store_files set status = 'failed', last_error = ?, lease_until = 0 "
                           "where store_id = ? and file_id = ?",
                           (json.dumps({"code": code, "message": message}), job["store_id"], job["file_id"]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
