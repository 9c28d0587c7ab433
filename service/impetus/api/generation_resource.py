"""The HTTP side of running the model: the resource base that chat,
completions, Responses and Messages share, and event-stream framing.

`GenerationResource` finds the model's engine (`engine_for`), answers from
the response cache or admits the key (`begin`, `admit`), starts the
request's `Generation` wired to the key's account and the metrics, and
sends the answer whole or as a stream (`answer`). The generation itself
(its events, its charge, the client watch) is `impetus.api.generation`'s.
"""

from __future__ import annotations

import json
import time

from impetus import __version__
from impetus.api.budget import with_defaults
from impetus.api.generation import QUEUE_HEADER, Comment, Generation, new_id_suffix
from impetus.api.models import alias_targets, model_defaults, model_error
from impetus.api.validation import parse
from impetus.engine.engine import Engine


def engine_for(host, model: str, account) -> Engine:
    """The model's engine, loaded first if it is not (other requests go on
    meanwhile), if the request's key may use it (403 before any loading)."""
    account.check_model(model, alias_targets(host, model))
    try:
        return host.acquire(model)
    except Exception as error:
        raise model_error(error, model) from error


def fingerprint(engine: Engine) -> str:
    return f"impetus-{__version__}-{engine.loaded.weights_dtype}"


def start_stream(resp, chunks) -> None:
    resp.content_type = "text/event-stream"
    resp.set_header("Cache-Control", "no-cache")
    # nginx must pass each event on as it comes rather than buffer the stream.
    resp.set_header("X-Accel-Buffering", "no")
    resp.stream = chunks


class GenerationResource:
    """Base of the resources that run the model. `cache` is the gateway's
    response cache, or None when the server runs without Redis."""

    route = ""  # names the endpoint in cache keys
    id_prefix = ""  # "chatcmpl", "cmpl"

    @staticmethod
    def replay(response: dict):
        """A complete response as the chunks a stream would have sent (the
        usage chunk apart: `_replayed` adds it)."""
        raise NotImplementedError

    def __init__(self, host, waker, settings, cache=None, metrics=None):
        self.host = host
        self.waker = waker
        self.settings = settings
        self.cache = cache
        self.metrics = metrics

    def generation(self, req, resp, engine: Engine, prompts, params, prompt_tokens: int,
                   priority: int | None = None, media=None, autocomplete: bool = False) -> "Generation":
        """Start the request's choices in the engine for the request's
        account, wired to its charge and to the metrics. `priority` (the
        request's extension field) can only make it later than its key's.
        The queue header is set now (a stream's headers leave now) and again
        when a collected answer is complete."""
        req.context.model = engine.loaded.name
        gen = req.context.generation = Generation(
            engine, self.waker.waiter(), prompts, params, req.env, prompt_tokens=prompt_tokens,
            account=req.context.account, metrics=self.metrics, started=req.context.started, priority=priority,
            media=media, autocomplete=autocomplete)
        resp.set_header(QUEUE_HEADER, f"{gen.queue_seconds:.3f}")
        gen.resp = resp
        return gen

    def admit(self, req, resp, body, engine: Engine):
        """Before any generation: the cached answer if there is one (a hit counts
        as a request of the key, but costs no tokens, so a key whose token
        budget is spent still gets it), else the key's token gate."""
        lookup = None
        req.context.model = engine.loaded.name
        if self.cache is not None:
            lookup = self.cache.lookup(req, self.route, body, engine.loaded.name, engine.loaded.revision)
            resp.set_header("x-impetus-cache", lookup.status)
            self.metrics.cache.labels(lookup.status).inc()
        hit = lookup is not None and lookup.status == "hit"
        req.context.account.admit(resp, enforce=not hit)
        if hit:
            req.context.account.charge(engine.loaded.name, 0, 0)
            resp.set_header(QUEUE_HEADER, "0.000")
        return lookup

    def response_meta(self, gen: "Generation") -> dict:
        """The fields every response and chunk of this request starts with."""
        return {
            "id": f"{self.id_prefix}-{gen.id_suffix}",
            "created": gen.created,
            "model": gen.engine.loaded.name,
            "system_fingerprint": fingerprint(gen.engine),
        }

    def served_from_cache(self, resp, lookup, stream: bool, include_usage: bool) -> bool:
        """Send the cached answer (replayed as a stream if asked for); False on a miss."""
        if lookup is None or lookup.status != "hit":
            return False
        response = fresh_copy(lookup.response, self.id_prefix)
        if stream:
            start_stream(resp, sse(self._replayed(response, include_usage)))
        else:
            resp.media = response
        return True

    def _replayed(self, response: dict, include_usage: bool):
        for chunk in self.replay(response):
            yield chunk
        if include_usage:  # the last chunk's fields, as a stream's usage chunk has them
            yield {**{k: v for k, v in chunk.items() if k != "choices"}, "choices": [], "usage": response["usage"]}

    def cache_store(self, lookup, gen: "Generation", response: dict) -> None:
        if lookup is not None and gen.completed:
            self.cache.store(lookup, response)


class CompletionResource(GenerationResource):
    """Base of OpenAI's chat and text completions: one start (`on_post`)
    and one answer (`answer`), the request's own work between (`run`)."""

    schema = None  # the request's pydantic schema

    def on_post(self, req, resp):
        """The request parsed with the server's defaults, its model's engine,
        its cache lookup; the cached answer is sent if there is one, else
        `run` starts the generation."""
        body = parse(self.schema, req.context.json)
        body = with_defaults(body, self.settings, model_defaults(self.host, body.model))
        engine = engine_for(self.host, body.model, req.context.account)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        lookup = self.admit(req, resp, body, engine)
        if not self.served_from_cache(resp, lookup, body.stream, include_usage):
            self.run(req, resp, body, engine, lookup, include_usage)

    def run(self, req, resp, body, engine: Engine, lookup, include_usage: bool) -> None:
        raise NotImplementedError

    @staticmethod
    def answer(resp, gen: Generation, stream: bool, chunks, complete) -> None:
        """Send the answer: `chunks` as server-sent events, or, collected,
        `complete()`."""
        if stream:
            start_stream(resp, sse(chunks))
            return
        gen.collect()
        resp.media = complete()


def fresh_copy(response: dict, id_prefix: str) -> dict:
    """A cached response under a new id and time, as any new response has."""
    return {**response, "id": f"{id_prefix}-{new_id_suffix()}", "created": int(time.time())}


def typed_sse(events):
    """Event streams that name each event's type (the Responses and Messages
    APIs; no [DONE] at the end). A `Comment` is sent as a comment line."""

    for event in events:
        if isinstance(event, Comment):
            yield f": {event}\n\n".encode()
            continue
        yield (f"event: {event['type']}\ndata: ".encode() + json.dumps(event, separators=(",", ":")).encode()
               + b"\n\n")


def sse(events):
    """Server-sent events framing for an iterator of JSON-able dicts (and
    `Comment`s, sent as comment lines)."""

    for event in events:
        if isinstance(event, Comment):
            yield f": {event}\n\n".encode()
            continue
        yield b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"
