"""Cross-cutting concerns as Falcon middleware."""

from __future__ import annotations

import re
import uuid

from impetus.web import APIError

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class RequestIdMiddleware:
    """Echo the caller's X-Request-ID (nginx sets one), or make one up; and say
    which host answered (`x-impetus-host`, its advertised address), for when
    several Macs serve one endpoint."""

    def __init__(self, host_address: str = ""):
        self.host_address = host_address

    def process_request(self, req, resp):
        incoming = req.get_header("X-Request-ID")
        req.context.request_id = incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        resp.set_header("X-Request-ID", req.context.request_id)
        if self.host_address:
            resp.set_header("x-impetus-host", self.host_address)


class JSONBodyMiddleware:
    """Refuse bodies that are not JSON (415) or are too large (413) before any
    resource reads them, then parse into `req.context.json`. A resource that
    takes a form (`multipart = True`: /v1/audio/transcriptions) gets its body
    raw in `req.context.raw`, within the same limit. A resource whose POST takes
    nothing (`bodyless = True`: the cancels) may be sent no body at all."""

    def __init__(self, max_body_bytes: int):
        self.max_body_bytes = max_body_bytes

    def process_resource(self, req, resp, resource, params):
        if req.method not in ("POST", "PUT", "PATCH"):
            return
        media_type = (req.content_type or "").split(";")[0].strip().lower()
        if getattr(resource, "bodyless", False) and not req.content_length:
            req.context.json = {}  # a POST that takes nothing (a cancel): clients send no body, or none at all
            return
        form = getattr(resource, "multipart", False)
        if form and media_type != "multipart/form-data":
            raise APIError(415, f"Content-Type must be multipart/form-data, got {req.content_type or 'none'}.",
                           code="unsupported_media_type")
        if not form and media_type != "application/json":
            raise APIError(
                415, f"Content-Type must be application/json, got {req.content_type or 'none'}.",
                code="unsupported_media_type",
            )
        length = req.content_length
        if length is not None and length > self.max_body_bytes:
            raise self._too_large()
        # A chunked body has no Content-Length: read the raw (de-chunked by
        # Gunicorn) stream, never more than one byte past the limit.
        stream = req.bounded_stream if length is not None else req.stream
        raw = stream.read(self.max_body_bytes + 1)
        if len(raw) > self.max_body_bytes:
            raise self._too_large()
        if form:
            req.context.raw = raw
        else:
            req.context.json = self._parse(raw)

    def _too_large(self) -> APIError:
        return APIError(
            413, f"Request body is larger than {self.max_body_bytes} bytes.", code="request_too_large"
        )

    @staticmethod
    def _parse(raw: bytes):
        import json

        if not raw:
            raise APIError(400, "Request body is empty; expected a JSON object.", code="invalid_json")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise APIError(400, f"Request body is not valid UTF-8 (byte {error.start}).", code="invalid_json")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise APIError(400, f"Request body is not valid JSON: {error.msg} at line {error.lineno} "
                           f"column {error.colno}.", code="invalid_json")
        except RecursionError:
            raise APIError(400, "Request body is nested too deeply.", code="invalid_json")
        if not isinstance(value, dict):
            raise APIError(400, "Request body must be a JSON object.", code="invalid_json")
        if "\\ud" in text.lower():  # JSON escapes can spell a lone UTF-16 surrogate
            value = _without_lone_surrogates(value)
        return value


def _without_lone_surrogates(value):
    """A lone surrogate ("\\ud800") is valid JSON but no character: tokenizers
    refuse it. Replace it with U+FFFD, as a UTF-8 decoder would."""
    if isinstance(value, str):
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value
