"""OpenAI-style errors: every failure is `{"error": {message, type, param, code}}`.

Falcon's own errors (404 route, 405 method, ...) and anything unexpected are
rendered the same way; an unexpected exception is logged with its traceback
and answered with a plain 500 that reveals nothing internal.
"""

from __future__ import annotations

import json
import logging

import falcon
from pydantic import ValidationError

from impetus.web import APIError

log = logging.getLogger("impetus.api")


def from_validation_error(error: ValidationError) -> APIError:
    first = error.errors()[0]
    location = [str(part) for part in first["loc"]]
    if location[-1:] == ["[key]"]:  # a dict key failed: name the field that holds it
        location = location[:-2]
        first = {**first, "msg": f"{first['msg']} (key {first['input']!r})"}
    # Unions report each alternative as a path element; keep the field path.
    param = ".".join(p for p in location if not p.startswith(("list[", "str", "int", "function-", "constrained-")))
    kind = first["type"]
    if kind == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
        code = "unknown_parameter"
    elif kind == "missing":
        message = f"Missing required parameter: '{param}'."
        code = "missing_required_parameter"
    else:
        message = f"Invalid value for '{param}': {first['msg']}."
        code = "invalid_value"
    return APIError(400, message, param=param or None, code=code)


_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "server_overloaded",
}


def _falcon_error_body(error: falcon.HTTPError) -> dict:
    body = getattr(error, "body", None)
    if isinstance(body, dict) and "error" in body:
        return body
    status = error.status_code
    message = error.description or error.title or falcon.code_to_http_status(status)
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": None,
            "code": None,
        }
    }


# Anthropic's error types by status, for the routes of its Messages API.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
    504: "timeout_error", 529: "overloaded_error",
}


def in_protocol_shape(req, status: int, body: dict) -> dict:
    """The error body as the route's protocol writes it: OpenAI's everywhere,
    `{"type": "error", "error": {"type", "message"}}` on /v1/messages (what
    Claude Code and the `anthropic` SDK read), whose message starts with the
    parameter's path, as Anthropic's own do ("messages.0.content.1: ..."),
    and Ollama's `{"error": "..."}` on its /api/ routes (the parameter first too)."""
    if req.path.startswith("/api/"):
        message, param = body["error"]["message"], body["error"].get("param")
        return {"error": f"{param}: {message}" if param and param not in message else message}
    if not req.path.startswith("/v1/messages"):
        return body
    kind = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    message, param = body["error"]["message"], body["error"].get("param")
    if param and param not in message:
        message = f"{param}: {message}"
    return {"type": "error", "error": {"type": kind, "message": message}}


def handle_http_error(req, resp, error: falcon.HTTPError, params) -> None:
    resp.status = error.status
    resp.content_type = falcon.MEDIA_JSON
    if error.headers:
        resp.set_headers(error.headers)
    resp.text = json.dumps(in_protocol_shape(req, error.status_code, _falcon_error_body(error)))


def handle_unexpected(req, resp, error: Exception, params) -> None:
    if isinstance(error, falcon.HTTPError):
        return handle_http_error(req, resp, error, params)
    log.exception("unhandled error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(in_protocol_shape(req, 500, {"error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error", "param": None, "code": None}}))
