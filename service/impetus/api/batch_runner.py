"""Runs batches (api.batches) in the worker's background, at batch priority, through restarts.

Every worker runs one loop. It takes a batch whose input lives in this host's
documents under a Redis lease (gateway.batches; another worker takes over when
a holder dies and its lease runs out), and sends its lines that have no answer
yet, `batch_concurrency` at a time, to the worker's own app: each line is a WSGI
request marked as the batch's (web.BATCH_ENV), so it goes through what a
client's request goes through (validation, the key's rate limits and budget,
usage, audit, the fair scheduler) as the key's tenant at batch priority: it
fills idle capacity and yields to everyone's interactive requests.

- An answer is kept in Redis by line number before the next is counted, so a
  crash loses at most the lines in flight (run again), and none is in the
  output twice. A worker killed mid-batch loses its lease at once to the next
  worker of its host (its process is gone), elsewhere when the lease runs out.
- A rate limit or a full queue (429 rate_limit_*, 503) is waited out and the
  line sent again; a spent budget (429 budget_exceeded) stops the batch: the
  lines not yet run fail with that error.
- Cancelling stops new lines; the batch ends `cancelled` with what was done.
  Past its 24-hour window it ends `expired`.
- At the end the answers become OpenAI's output and error files (JSONL, in
  line order), which the key downloads with /v1/files/{id}/content.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from impetus.api.batches import check_lines
from impetus.documents.db import new_id
from impetus.web import BATCH_ENV

log = logging.getLogger("impetus.batches")

IDLE_S = 2.0
MAX_WAIT_S = 10.0


class BatchRunner:
    def __init__(self, store, documents, address: str, metrics, concurrency: int = 16):
        self.store, self.documents, self.address, self.metrics = store, documents, address, metrics
        self.concurrency = concurrency
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
                for batch_id in self.store.active():
                    record = self.store.record(batch_id)
                    if record is None or record.get("host") != self.address:
                        continue
                    if self.store.lease(batch_id, self.holder, self._dead):
                        try:
                            self.run(record)
                            ran = True
                        finally:
                            self.store.release(batch_id, self.holder)
                if not ran:
                    self._wake.wait(IDLE_S)
                    self._wake.clear()
            except Exception:  # Redis away, a file gone: the loop goes on, the lease runs out
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

    def run(self, record: dict) -> None:
        batch_id, owner = record["id"], record["owner"]
        try:
            data = self.documents.files.content(owner, record["input_file_id"])
        except Exception:
            return self._end(record, "failed", errors=[{"code": "input_file_missing", "line": None, "param": None,
                                                        "message": "The batch's input file was deleted."}])
        lines, _ = check_lines(data.decode("utf-8"), record["endpoint"])
        done = self.store.answered(batch_id)
        pending = [i for i in range(len(lines)) if i not in done]
        stop: dict = {}
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = []
            for number in pending:
                state = self._state(record, stop)
                if state:
                    break
                while len([f for f in futures if not f.done()]) >= self.concurrency:
                    time.sleep(0.02)
                futures.append(pool.submit(self._line, record, number, lines[number], stop))
            for future in futures:
                future.result()
        state = self._state(record, stop)
        if stop.get("budget"):
            answered = self.store.answered(batch_id)
            for number in range(len(lines)):
                if number not in answered:
                    self.store.answer(batch_id, number, _error_line(lines[number], "budget_exceeded",
                                                                    stop["budget"]), failed=True)
        if state in ("cancelling", "expired"):
            return self._end(record, "cancelled" if state == "cancelling" else "expired")
        if len(self.store.answered(batch_id)) >= len(lines):
            self._end(record, "completed")

    def _state(self, record: dict, stop: dict) -> str | None:
        """Why to send no more lines: cancelling, expired, a spent budget; None: go on."""
        self.store.lease(record["id"], self.holder, self._dead)
        if stop.get("budget"):
            return "budget"
        status = (self.store.record(record["id"]) or {}).get("status")
        if status == "cancelling":
            return "cancelling"
        if time.time() > record["expires_at"]:
            return "expired"
        return None

    def _line(self, record: dict, number: int, line: dict, stop: dict) -> None:
        waited = 0.0
        while True:
            status, headers, body = self._call(record, line)
            code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
            if status == 429 and code == "budget_exceeded":
                stop["budget"] = body["error"]["message"]
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
