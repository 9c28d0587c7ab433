"""The HTTP pieces every layer shares, below all of them: the API's error
(OpenAI-shaped; api.errors renders it in the route's protocol) and the hook
that runs when a response is over. The gateway and the metrics use them
without importing from api/, so layers only point down."""

from __future__ import annotations

import falcon


class APIError(falcon.HTTPError):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(falcon.code_to_http_status(status), headers=headers)
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


# The WSGI environ entry of a batch's line, run in the worker's own process (api.batch_runner):
# {"owner": the key's hash}. A client cannot send it: headers arrive as HTTP_* entries.
BATCH_ENV = "impetus.batch"


class RequestContext:
    """What middleware and resources put on `req.context`, each with its
    default, so nothing is looked up with getattr. `account` is set first of
    all (impetus.gateway.account): never None inside a resource."""

    request_id: str | None = None
    account = None
    model: str = ""
    generation = None  # the api's Generation, once the model runs
    audit = None  # the admin action a resource carried out, to record (impetus.gateway.audit)
    json = None  # the parsed body
    started: float | None = None
    access_started: float | None = None


class Request(falcon.Request):
    context_type = RequestContext


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def when_sent(resp, callback) -> None:
    """Call `callback` once the response is over: now, or after a stream's last
    byte (or when the client leaves it)."""
    if resp.stream is not None and not isinstance(resp.stream, (bytes, bytearray)):
        resp.stream = _then(resp.stream, callback)
    else:
        callback()


def _then(stream, callback):
    try:
        yield from stream
    finally:
        callback()
