"""One API request's choices running in an engine, as the request sees them.

`Generation` submits each choice for the request's key, yields their events
as they come (with queue notes for streams, pings for Anthropic, a 504 after
a long silence), gathers text, tokens and log-probabilities, watches the
client's socket and cancels when it leaves, and charges the key exactly
once. It knows nothing of HTTP resources or protocols' shapes
(`generation_resource` and the faces do).
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field

import gevent
import gevent.socket

from impetus.engine.engine import Engine, QueueFull, TooLargeForMemory
from impetus.engine.request import BATCH, PRIORITY_NAMES, FinishEvent, SamplingParams, TokenEvent
from impetus.web import APIError, bad_request

PRIORITY_LABELS = {value: name for name, value in PRIORITY_NAMES.items()}


# How long a request may see no output at all before we give up on it.
STALL_TIMEOUT_S = 600


# A stream still waiting for a batch slot says so this often (an SSE comment).
QUEUE_NOTE_S = 3.0


QUEUE_HEADER = "x-impetus-queue-seconds"


def new_id_suffix() -> str:
    return uuid.uuid4().hex[:24]


@dataclass
class Choice:
    """The accumulated result of one choice."""

    index: int
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish: FinishEvent | None = None


@dataclass
class Queued:
    """A stream is still waiting for a batch slot: `position` in the queue."""

    position: int
    seconds: float

    def comment(self) -> "Comment":
        return Comment(f"queued position={self.position} waited={self.seconds:.1f}s")


class Comment(str):
    """An SSE comment line: clients ignore it, proxies see traffic."""


# A stream sends a comment after this long without output (a long prompt's
# prefill): a cluster gateway's nginx ends a stream whose host has been silent
# for its read timeout (IMPETUS_UPSTREAM_READ_TIMEOUT_S), which must mean the
# host is lost, never that it is busy.
KEEPALIVE_S = 10.0
KEEPALIVE = Comment("keep-alive")


class Generation:
    """One API request's choices running in an engine.

    Every choice's handle shares one waiter, so the greenlet serving the
    request sleeps until any of them has output.
    """

    def __init__(self, engine: Engine, waiter, prompts: list[list[int]], params: list[SamplingParams], env,
                 prompt_tokens: int, account, metrics, started: float | None = None, priority: int | None = None,
                 autocomplete: bool = False,
                 media=None):
        """`prompt_tokens` counts each distinct prompt once; `account` is who
        it is for: the engine schedules it as the account's tenant, and
        charges the account once when the response is over; `media`: the
        prompts' images (one chat prompt's, engine.media)."""
        self.engine = engine
        self.waiter = waiter
        # Filled in as events flow, whether they are streamed or collected.
        self.choices = [Choice(i) for i in range(len(prompts))]
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.account = account
        self.resp = None  # the response whose queue header a collected answer updates
        self._metrics = metrics
        self._closed = False
        self._charged = False
        self._activity = None
        self._keystroke = False
        self._started = started if started is not None else time.perf_counter()
        self._first_token_at = self._last_token_at = None
        self.id_suffix = new_id_suffix()
        self.created = int(time.time())
        self.handles = []
        capacity = engine.max_batch_size + engine.max_queue
        if len(prompts) > capacity:
            # A 503 would invite a retry that can never succeed.
            raise bad_request(f"This request asks for {len(prompts)} sequences (prompts x n); this server "
                              f"holds at most {capacity} at once.", param="n", code="too_many_sequences")
        try:
            for prompt, p in zip(prompts, params):
                self.handles.append(engine.submit(prompt, p, waiter, tenant=account.tenant_for(autocomplete), priority=priority,
                                                  media=media))
        except QueueFull as error:
            self.cancel()
            metrics.queue_rejections.labels(engine.loaded.name).inc()
            raise APIError(503, f"The server is overloaded: {error}. Please retry shortly.",
                           type="server_overloaded", code="queue_full", headers={"Retry-After": "1"})
        except TooLargeForMemory as error:
            self.cancel()
            raise bad_request(str(error), param="max_tokens", code="kv_cache_exceeded")
        except RuntimeError as error:
            self.cancel()
            raise APIError(503, str(error), type="server_error", code="engine_unavailable",
                           headers={"Retry-After": "5"})
        # A person waits for this one: batch work elsewhere on the host yields to it, and other
        # engines' steps to an editor's keystroke (engine.activity).
        self._activity = engine.activity if self.handles and self.handles[0].priority < BATCH else None
        self._keystroke = autocomplete and self._activity is not None
        if self._activity is not None:
            engine.keystrokes_here += self._keystroke
            self._activity.begin(self._keystroke)
        self._watcher = _watch_disconnect(env, self.cancel)

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()

    @property
    def queue_seconds(self) -> float:
        """How long the request waited for batch slots (its longest-waiting choice)."""
        return max((h.queue_seconds for h in self.handles), default=0.0)

    def _queued(self) -> Queued | None:
        waiting = [h for h in self.handles if h.admitted_at is None and not h.outbox]
        if not waiting:
            return None
        return Queued(min(h.queue_position for h in waiting) or 1, self.queue_seconds)

    def close(self) -> None:
        """The response is over (sent, or the client left): stop whatever still
        runs and the disconnect watcher. Cancelling a finished choice is a no-op."""
        self.cancel()
        if self._watcher is not None:
            self._watcher.kill(block=False)
            self._watcher = None
        if self._closed:
            return
        self._closed = True
        if self._activity is not None:
            self.engine.keystrokes_here -= self._keystroke
            self._activity.end(self._keystroke)
        self._charge()
        metrics, model, key = self._metrics, self.engine.loaded.name, self.account.name
        metrics.prompt_tokens.labels(model, key).inc(self.prompt_tokens)
        metrics.generation_tokens.labels(model, key).inc(self.completion_tokens)
        if self.handles and all(h.admitted_at is not None for h in self.handles):
            priority = PRIORITY_LABELS.get(self.handles[0].priority, str(self.handles[0].priority))
            metrics.queue_wait_seconds.labels(model, priority).observe(self.queue_seconds)
        if self._first_token_at is not None:
            metrics.ttft_seconds.labels(model).observe(self._first_token_at - self._started)
            if self.completion_tokens > 1:
                metrics.tpot_seconds.labels(model).observe(
                    (self._last_token_at - self._first_token_at) / (self.completion_tokens - 1))

    def _charge(self) -> None:
        """Charge the key once: as soon as every choice has finished, before
        the last chunk leaves (so a worker killed after a client saw its answer
        end cannot lose that usage), or at close for an answer cut short."""
        if self._charged:
            return
        self._charged = True
        self.account.charge(self.engine.loaded.name, self.prompt_tokens, self.completion_tokens, self.cached_tokens)

    def durations(self) -> tuple[float, float, float]:
        """Seconds: the request so far, to its first token, and from there to its last."""
        now = time.perf_counter()
        first = self._first_token_at or now
        return now - self._started, first - self._started, (self._last_token_at or first) - first

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens read from the prefix cache (the most of any choice)."""
        return max((c.finish.cached_tokens for c in self.choices if c.finish is not None), default=0)

    def events(self, heartbeat: float | None = None, notes: bool = True):
        """Yield (choice index, event) until every choice has finished; with
        `heartbeat`, also (None, None) after each that many seconds without
        output (Anthropic's ping while a long prompt prefills); with `notes`
        (streams), (None, Queued) every QUEUE_NOTE_S while a choice still
        waits for a batch slot."""
        open_ = set(range(len(self.handles)))
        last_output = last_ping = last_note = time.monotonic()
        while open_:
            for index in list(open_):
                outbox = self.handles[index].outbox
                while outbox:
                    event = outbox.popleft()
                    self._accumulate(self.choices[index], event)
                    yield index, event
                    if isinstance(event, FinishEvent):
                        open_.discard(index)
                        break
            if not open_ or any(self.handles[i].outbox for i in open_):
                continue
            now = time.monotonic()
            queued = self._queued() if notes else None
            waits = [last_output + STALL_TIMEOUT_S - now]
            if heartbeat is not None:
                waits.append(last_ping + heartbeat - now)
            if queued is not None:
                waits.append(last_note + QUEUE_NOTE_S - now)
            if self.waiter.wait(max(0.0, min(waits))):
                last_output = last_ping = time.monotonic()
                continue
            now = time.monotonic()
            queued = self._queued() if notes else None
            if queued is not None:
                last_output = now  # waiting for a slot is not a stall
                if now - last_note >= QUEUE_NOTE_S:
                    last_note = last_ping = now
                    yield None, queued
                    continue
            if now - last_output >= STALL_TIMEOUT_S:
                self.cancel()
                raise APIError(504, "The model produced no output in time.", type="server_error")
            if heartbeat is not None and now - last_ping >= heartbeat:
                last_ping = now
                yield None, None

    def _accumulate(self, choice: Choice, event) -> None:
        if isinstance(event, TokenEvent):
            self._last_token_at = time.perf_counter()
            if self._first_token_at is None:
                self._first_token_at = self._last_token_at
            self.completion_tokens += 1
            choice.text += event.text
            choice.tokens.append(event.token)
            if event.logprob is not None:
                choice.logprobs.append(event.logprob)
                choice.top_logprobs.append(event.top_logprobs or [])
        else:
            choice.text += event.text
            choice.finish = event
            if all(c.finish is not None for c in self.choices):
                self._charge()

    @property
    def completed(self) -> bool:
        """Every choice ended with stop or length (nothing cut short or failed)."""
        return all(c.finish is not None and c.finish.reason in ("stop", "length") for c in self.choices)

    def collect(self) -> list[Choice]:
        try:
            for _, event in self.events(notes=False):
                if isinstance(event, FinishEvent):
                    raise_if_failed(event)
        finally:
            self.close()
            if self.resp is not None:
                self.resp.set_header(QUEUE_HEADER, f"{self.queue_seconds:.3f}")
        return self.choices


def _engine_failure() -> APIError:
    return APIError(500, "Generation failed inside the engine.", type="server_error", code="engine_error")


def raise_if_failed(event: FinishEvent) -> None:
    if event.reason == "error":
        raise _engine_failure()


def stream_error(event: FinishEvent) -> dict | None:
    """The error event a stream ends with when its generation failed."""
    return _engine_failure().body if event.reason == "error" else None


def usage(prompt_tokens: int, finishes: list[FinishEvent]) -> dict:
    """Exact token counts; `prompt_tokens` counts each distinct prompt once,
    however many choices (n) were sampled from it."""
    completion = sum(f.completion_tokens for f in finishes)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": max((f.cached_tokens for f in finishes), default=0)},
        # Speculative decoding's guesses (IMPETUS_SPECULATIVE), in the fields OpenAI
        # uses for Predicted Outputs: accepted ones cost no forward pass of their own.
        "completion_tokens_details": {
            "accepted_prediction_tokens": sum(f.accepted_prediction_tokens for f in finishes),
            "rejected_prediction_tokens": sum(f.rejected_prediction_tokens for f in finishes),
        },
    }


def _watch_disconnect(env, on_disconnect):
    """Cancel generation when the client closes its connection.

    Streaming responses notice a dead client when a write fails, but a request
    still queued, or a non-streaming one, writes nothing until it is done. The
    watcher peeks at the socket: readable with zero bytes means EOF.
    """
    sock = env.get("gunicorn.socket")
    if sock is None:
        return None

    def watch():
        try:
            gevent.socket.wait_read(sock.fileno())
            if not sock.recv(1, socket.MSG_PEEK):
                on_disconnect()
        except (OSError, ValueError):
            on_disconnect()

    return gevent.spawn(watch)
