"""/v1/batches: OpenAI's Batch API (create, retrieve, list, cancel) over the key's own files.

A batch's input is a file the key uploaded with purpose `batch`: OpenAI's JSONL,
one request a line (`custom_id`, `method` POST, `url` the batch's endpoint,
`body`). It is read and checked when the batch is made: a line that is not
JSON, lacks a field, repeats a `custom_id` or names another endpoint fails the
batch at once, with OpenAI's `errors` list naming the lines (at most
MAX_ERRORS of them). A body is checked when its line runs, as OpenAI's are:
a bad one is that line's 400 in the error file.

The lines run in the background (api.batch_runner), at batch priority, under
the key's own limits and budget; progress is kept in Redis
(gateway.batches), so a restart goes on where it was. Batches need Redis:
without it (keys off) these routes answer 400.
"""

from __future__ import annotations

import json
import time

from pydantic import Field

from impetus.api.listing import listing
from impetus.api.schema_base import RequestModel, ResponseModel
from impetus.api.validation import parse
from impetus.documents.db import new_id
from impetus.gateway.audit import AuditEntry
from impetus.gateway.batches import WINDOW_S
from impetus.web import APIError, bad_request

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
MAX_LINES = 50_000
MAX_ERRORS = 100


class BatchCreate(RequestModel):
    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = Field(None, max_length=16)
    output_expires_after: dict | None = None


class BatchObject(ResponseModel):
    id: str
    object: str
    endpoint: str
    errors: dict | None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    request_counts: dict[str, int]
    metadata: dict | None = None


class BatchList(ResponseModel):
    object: str
    data: list[BatchObject]
    has_more: bool


def batch_object(record: dict) -> dict:
    errors = record.get("errors")
    return {
        "id": record["id"], "object": "batch", "endpoint": record["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": record["input_file_id"], "completion_window": "24h", "status": record["status"],
        "output_file_id": record.get("output_file_id"), "error_file_id": record.get("error_file_id"),
        "created_at": record["created_at"],
        **{f: record.get(f) for f in ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
                                      "expired_at", "cancelling_at", "cancelled_at")},
        "request_counts": {"total": record["total"], "completed": record["completed"], "failed": record["failed"]},
        "metadata": record.get("metadata") or {},
    }


def check_lines(text: str, endpoint: str) -> tuple[list[dict], list[dict]]:
    """(the lines' requests, OpenAI's validation errors naming lines)."""
    lines, errors, seen = [], [], set()

    def error(number: int, code: str, message: str, param: str | None = None) -> None:
        if len(errors) < MAX_ERRORS:
            errors.append({"code": code, "message": message, "param": param, "line": number})

    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError:
            error(number, "invalid_json_line", "This line is not parseable as valid JSON.")
            continue
        if not isinstance(item, dict):
            error(number, "invalid_request", "Each line must be a JSON object.")
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            error(number, "missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id")
        elif custom_id in seen:
            error(number, "duplicate_custom_id", f"The custom_id '{custom_id}' is used by an earlier line.",
                  "custom_id")
        seen.add(custom_id)
        if item.get("method") != "POST":
            error(number, "invalid_method", "The method must be POST.", "method")
        if item.get("url") != endpoint:
            error(number, "mismatched_endpoint", f"The url must be the batch's endpoint, {endpoint}.", "url")
        body = item.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            error(number, "invalid_request", "The body must be a JSON object with a model.", "body")
        elif body.get("stream"):
            error(number, "invalid_request", "A batch's requests cannot stream.", "body.stream")
        lines.append(item)
    if not lines and not errors:
        error(1, "empty_file", "The input file has no requests.")
    if len(lines) > MAX_LINES:
        error(MAX_LINES + 1, "too_many_requests", f"A batch holds at most {MAX_LINES} requests.")
    return lines, errors


def _store(gateway):
    if gateway is None:
        raise bad_request("Batches need Redis (this server runs without API keys).", code="batches_unavailable")
    return gateway.batches


class BatchesResource:
    def __init__(self, gateway, documents, settings, runner=None):
        self.gateway, self.documents, self.settings, self.runner = gateway, documents, settings, runner

    def on_post(self, req, resp):
        store = _store(self.gateway)
        body = parse(BatchCreate, req.context.json)
        if body.endpoint not in ENDPOINTS:
            raise bad_request(f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
        if body.completion_window != "24h":
            raise bad_request("completion_window must be 24h.", param="completion_window")
        owner = req.context.account.owner
        file = self.documents.files.row(owner, body.input_file_id, "input_file_id")
        if file["purpose"] != "batch":
            raise bad_request(f"The file {body.input_file_id} was uploaded with purpose '{file['purpose']}', "
                              "not 'batch'.", param="input_file_id", code="invalid_file")
        try:
            text = self.documents.files.content(owner, body.input_file_id).decode("utf-8")
        except UnicodeDecodeError:
            text = "\x00"
        lines, errors = check_lines(text, body.endpoint) if text != "\x00" else (
            [], [{"code": "invalid_file", "message": "The file is not UTF-8 text.", "param": None, "line": None}])
        now, batch_id = int(time.time()), new_id("batch_")
        fields = {"endpoint": body.endpoint, "input_file_id": body.input_file_id, "created_at": now,
                  "expires_at": now + WINDOW_S, "metadata": body.metadata or {}, "host": self.settings.advertise_address,
                  "status": "failed" if errors else "in_progress", "errors": errors or None,
                  **({"failed_at": now} if errors else {"in_progress_at": now})}
        store.create(batch_id, owner, fields, lines, active=not errors)
        req.context.audit = AuditEntry("batch.created", batch_id, {"endpoint": body.endpoint, "requests": len(lines),
                                                                  "status": fields["status"]})
        if not errors and self.runner is not None:
            self.runner.wake()
        resp.media = batch_object(store.record(batch_id))

    def on_get(self, req, resp):
        store = _store(self.gateway)
        options = listing(req, before=False)
        records, more = store.listing(req.context.account.owner, options["limit"], options["after"])
        data = [batch_object(r) for r in records]
        resp.media = {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                      "last_id": data[-1]["id"] if data else None, "has_more": more}


def _mine(gateway, req, batch_id: str) -> dict:
    record = _store(gateway).record(batch_id, req.context.account.owner)
    if record is None:
        raise APIError(404, f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found")
    return record


class BatchResource:
    def __init__(self, gateway):
        self.gateway = gateway

    def on_get(self, req, resp, batch_id):
        resp.media = batch_object(_mine(self.gateway, req, batch_id))


class BatchCancelResource:
    bodyless = True  # the SDKs send no body

    def __init__(self, gateway, runner=None):
        self.gateway, self.runner = gateway, runner

    def on_post(self, req, resp, batch_id):
        record = _mine(self.gateway, req, batch_id)
        if record["status"] in ("in_progress", "validating"):
            self.gateway.batches.set_status(batch_id, "cancelling")
            req.context.audit = AuditEntry("batch.cancelled", batch_id, {"done": record["completed"] + record["failed"],
                                                                         "requests": record["total"]})
            if self.runner is not None:
                self.runner.wake()
        elif record["status"] != "cancelling":
            raise APIError(409, f"The batch {batch_id} is {record['status']}; only a running batch can be "
                                "cancelled.", param="batch_id", code="batch_not_cancellable")
        resp.media = batch_object(_mine(self.gateway, req, batch_id))
