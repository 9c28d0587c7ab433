"""Runs batches (api.batches) in the workers' background, at batch priority, through restarts.

Every worker of every host runs one loop. One worker of each host at a time
(a lease per host: with every worker of a 2-core VM running 16 lines, a
person's TTFT beside a batch went from 1.2x to 2.7x alone; one worker's batch
yields to the others') takes the lines of active batches CHUNK at a time
(gateway.batches: a Redis lease on each chunk; another worker takes a chunk
over when its holder dies and its lease runs out, at once on the same host),
while it has room (no request of its own waits for an engine slot), and sends
them, `batch_concurrency` at a time, to the worker's own app:
each line is a WSGI request marked as the batch's (web.BATCH_ENV), so it goes
through what a client's request goes through (validation, the key's rate
limits and budget, usage, audit, the fair scheduler) as the key's tenant at
batch priority: it fills idle capacity and yields to everyone's interactive
requests. In a cluster the hosts with free capacity take more chunks; a host
that does not serve a line's model gives its chunk back to the others.

- An answer is kept in Redis by line number before the next is counted, so a
  crash loses at most the lines in flight (run again), and none is in the
  output twice.
- A rate limit or a full queue (429 rate_limit_*, 503) is waited out and the
  line sent again; a spent budget (429 budget_exceeded) stops the batch: the
  lines not yet run fail with that error.
- Cancelling stops new lines; the batch ends `cancelled` with what was done.
  Past its 24-hour window it ends `expired`.
- At the end one worker (a lease, once) makes the answers OpenAI's output and
  error files (JSONL, in line order), which the key downloads with
  /v1/files/{id}/content (nginx finds the host that holds them).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from impetus.documents.db import new_id
from impetus.gateway.batches import CHUNK
from impetus.web import BATCH_ENV

log = logging.getLogger("impetus.batches")

IDLE_S = 1.0  # how soon the workers of other hosts join a new batch
MAX_WAIT_S = 10.0
RENEW_S = 5.0


class BatchRunner:
    def __init__(self, store, documents, address: str, metrics, concurrency: int = 16, has_room=lambda: True,
                 elsewhere=lambda model: False):
        self.store, self.documents, self.address, self.metrics = store, documents, address, metrics
        self.concurrency = concurrency
        self.has_room = has_room  # whether this worker may take another chunk (none of its requests waits)
        self.elsewhere = elsewhere  # whether another host of the cluster serves a model this one does not
        self._elsewhere: set[str] = set()  # batches left to those hosts
        self._inputs: dict[str, list[dict]] = {}  # the active batches' lines
        self.app = None  # the worker's WSGI app (create_app sets it)
        self._wake = threading.Event()
        self._started = False
        self.holder = f"{address}|{os.getpid()}"

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.holder = f"{self.address}|{os.getpid()}"
            threading.Thread(target=self._loop, name="impetus-batches", daemon=True).start()

    def wake(self) -> None:
        self.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            try:
                ran = False
                active = self.store.active()
                for batch_id in set(self._inputs) - set(active):
                    del self._inputs[batch_id]
                for batch_id in active:
                    record = self.store.record(batch_id)
                    if record is not None and batch_id not in self._elsewhere:
                        ran = self.run(record) or ran
                if not ran:
                    self._wake.wait(IDLE_S)
                    self._wake.clear()
            except Exception:  # Redis away, a file gone: the loop goes on, the leases run out
                log.exception("batch loop failed")
                time.sleep(IDLE_S)

    def _dead(self, holder: str) -> bool:
        """A worker of this host (same address) whose process is gone, killed mid-batch."""
        address, _, pid = holder.rpartition("|")
        if address != self.address or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def run(self, record: dict) -> bool:
        """Run the chunks of the batch this worker can take now, then end the
        batch if it is done; whether any line ran here."""
        batch_id = record["id"]
        lines = self._lines(record)
        if lines is None:
            if self.store.finalize(batch_id, self.holder, self._dead):
                self._end(record, "failed", errors=[{"code": "input_file_missing", "line": None, "param": None,
                                                     "message": "The batch's input lines are gone."}])
            return False
        if not self.store.host_turn(batch_id, self.address, self.holder, self._dead):
            return False  # another worker of this host runs it
        try:
            return self._run_chunks(record, lines)
        finally:
            self.store.end_turn(batch_id, self.address, self.holder)

    def _run_chunks(self, record: dict, lines: list[dict]) -> bool:
        batch_id = record["id"]
        stop: dict = {}
        held: dict[int, list] = {}  # chunk -> its lines' futures, until it is given back
        ran = False
        with ThreadPoolExecutor(self.concurrency) as pool:
            # A chunk is claimed when a slot is free, so that a worker holds few lines it is not running.
            while self._slot(batch_id, held) and not self._state(record, stop, held) and self.has_room():
                start = self.store.claim(batch_id, self.holder, len(lines), self._dead)
                if start is None:
                    break
                held[start] = []
                for number in self.store.unanswered(batch_id, range(start, min(start + CHUNK, len(lines)))):
                    if not self._slot(batch_id, held) or self._state(record, stop, held):
                        break
                    held[start].append(pool.submit(self._line, record, number, lines[number], stop))
                    ran = True
                self._let_go(batch_id, held)
            self._slot(batch_id, held, below=1)  # all answered, the chunks renewed meanwhile
        self._let_go(batch_id, held)
        if stop.get("elsewhere"):
            self._elsewhere.add(batch_id)
        if stop.get("budget"):
            self.store.update(batch_id, budget_stop=stop["budget"])
        self._finish(record, lines)
        return ran

    def _lines(self, record: dict) -> list[dict] | None:
        """Its input lines (read from Redis once per worker); None: they are gone (a Redis without
        its append-only file)."""
        if record["id"] not in self._inputs:
            self._inputs[record["id"]] = self.store.lines(record["id"])
        lines = self._inputs[record["id"]]
        return None if not lines and record.get("total") else lines

    def _slot(self, batch_id: str, held: dict, below: int | None = None) -> bool:
        """Wait until fewer than `below` (`concurrency`) of its lines run here, giving back the chunks done."""
        renewed, below = time.monotonic(), below or self.concurrency
        while sum(not f.done() for chunk in held.values() for f in chunk) >= below:
            self._let_go(batch_id, held)
            if time.monotonic() - renewed > RENEW_S:  # long answers: the chunks stay this worker's
                self._renew(batch_id, held)
                renewed = time.monotonic()
            time.sleep(0.02)
        return True

    def _let_go(self, batch_id: str, held: dict) -> None:
        """Give back the chunks whose lines are done: answered, or left to the others (a host without
        the model, a cancel): a chunk with lines unanswered and no holder is anyone's to take."""
        for start in [s for s, chunk in held.items() if all(f.done() for f in chunk)]:
            for error in {f.exception() for f in held[start]} - {None}:  # Redis away: the line runs again
                log.warning("batch %s: a line of the chunk at %d failed: %s", batch_id, start, error)
            self.store.release(batch_id, start, self.holder)
            del held[start]

    def _finish(self, record: dict, lines: list[dict]) -> None:
        """End the batch once nothing more will run: all answered, or cancelled, expired or out of budget
        with no live worker holding a chunk; the lines a spent budget left fail with its error."""
        batch_id = record["id"]
        fresh = self.store.record(batch_id) or {}
        answered = self.store.answered(batch_id)
        state = self._state(fresh, {}, {})
        if len(answered) < len(lines) and (state is None or self.store.held(batch_id, self._dead)):
            return
        if fresh.get("status") not in ("in_progress", "cancelling") or \
                not self.store.finalize(batch_id, self.holder, self._dead):
            return
        if fresh.get("budget_stop"):
            for number in range(len(lines)):
                if number not in answered:
                    self.store.answer(batch_id, number, _error_line(lines[number], "budget_exceeded",
                                                                    fresh["budget_stop"]), failed=True)
        if state in ("cancelling", "expired"):
            return self._end(fresh, "cancelled" if state == "cancelling" else "expired")
        self._end(fresh, "completed")

    def _state(self, record: dict, stop: dict, held: dict) -> str | None:
        """Why to send no more lines: cancelling, expired, a spent budget, a model not here; None: go on."""
        self._renew(record["id"], held)
        if stop.get("budget") or stop.get("elsewhere"):
            return "budget" if stop.get("budget") else "elsewhere"
        fresh = self.store.record(record["id"]) or {}
        if fresh.get("budget_stop"):
            return "budget"
        if fresh.get("status") == "cancelling":
            return "cancelling"
        if time.time() > record["expires_at"]:
            return "expired"
        return None

    def _renew(self, batch_id: str, held: dict) -> None:
        """The leases on its chunks and on its host's turn stay this worker's."""
        self.store.renew(batch_id, list(held), self.holder)
        self.store.host_turn(batch_id, self.address, self.holder, self._dead)

    def _line(self, record: dict, number: int, line: dict, stop: dict) -> None:
        waited = 0.0
        while True:
            status, headers, body = self._call(record, line)
            code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
            if status == 429 and code == "budget_exceeded":
                stop["budget"] = body["error"]["message"]
                return
            if status == 404 and code == "model_not_found" and self.elsewhere(str(line["body"].get("model"))):
                stop["elsewhere"] = True  # another host of the cluster serves it: the line is theirs
                return
            if (status == 429 or status == 503) and waited < 600:
                pause = min(MAX_WAIT_S, float(headers.get("retry-after", "1") or 1))
                time.sleep(pause)
                waited += pause
                continue
            output = {"id": f"batch_req_{new_id('')}", "custom_id": line["custom_id"],
                      "response": {"status_code": status, "request_id": headers.get("x-request-id"), "body": body},
                      "error": None}
            self.store.answer(record["id"], number, output, failed=status >= 300)
            self.metrics.batch_requests.labels("failed" if status >= 300 else "completed").inc()
            return

    def _call(self, record: dict, line: dict) -> tuple[int, dict, dict]:
        from falcon.testing import create_environ

        environ = create_environ(path=line["url"], method="POST", body=json.dumps(line["body"]),
                                 headers={"Content-Type": "application/json"})
        environ[BATCH_ENV] = {"owner": record["owner"], "batch": record["id"]}
        started: dict = {}

        def start_response(status, headers, exc_info=None):
            started["status"], started["headers"] = int(status.split()[0]), {k.lower(): v for k, v in headers}

        chunks = self.app(environ, start_response)
        try:
            raw = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"error": {"message": raw.decode(errors="replace")[:500], "type": "server_error"}}
        return started["status"], started["headers"], body

    def _end(self, record: dict, status: str, errors: list | None = None) -> None:
        batch_id, owner = record["id"], record["owner"]
        self.store.set_status(batch_id, "finalizing")
        results = self.store.results(batch_id)
        files = {}
        for name, failed in (("output", False), ("error", True)):
            rows = [json.dumps(results[n][0]) for n in sorted(results) if results[n][1] == failed]
            if rows:
                made = self.documents.files.create(owner, f"{batch_id}_{name}.jsonl", "batch_output",
                                                   ("\n".join(rows) + "\n").encode(), None)
                files[f"{name}_file_id"] = made["id"]
        self.store.set_status(batch_id, status, **files, **({"errors": errors} if errors else {}))
        log.info("batch %s %s: %d answers", batch_id, status, len(results))


def _error_line(line: dict, code: str, message: str) -> dict:
    return {"id": f"batch_req_{new_id('')}", "custom_id": line["custom_id"], "response": None,
            "error": {"code": code, "message": message}}
