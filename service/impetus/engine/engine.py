"""The engine: one native thread per loaded model, continuous batching.

A request's life:

1. A greenlet calls `Engine.submit(prompt_tokens, params, waiter)`. The request
   goes into `_inbox` (a C-level SimpleQueue: never blocks the caller, and
   gevent's monkey-patching does not touch it) and the caller gets a handle.
2. The engine thread queues it in the `Scheduler` (fair between keys, by
   priority), and when the batch has a free slot, or the scheduler pauses a
   running request of a key over its share to make one, inserts it into
   mlx-lm's `BatchGenerator`, starting from the longest cached prefix of its
   prompt (`LRUPromptCache`), so a follow-up turn of a conversation only
   prefills what is new. A request whose prompt shares a long prefix with one
   being prefilled waits until that prefix is computed, then starts from it
   (`_shares_prefix`): N agents with one system prompt prefill it once.
3. Each `BatchGenerator.next()` prefills newcomers and decodes one token for
   everyone running. Every token is detokenized, checked against the
   request's stop strings and pushed to its handle, which wakes the caller.
   While at most `speculative_max_batch` requests run, all decoding and none
   seeded, the engine takes them out of mlx-lm's batch and decodes them
   itself (`_spec_step`): each request's next tokens are guessed from its own
   prompt and output (prompt lookup), and one forward pass checks every
   request's guesses; the cache rows keep what each accepted
   (`SpecBatchCache`). A newcomer sends them all back into the batch.
4. A finished request leaves the batch; its KV cache goes into the prefix
   cache. A cancelled one (client gone) is removed at the next step.

MLX releases the GIL while it computes, so the greenlets serving HTTP keep
running while the model works.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import traceback
from _queue import Empty, SimpleQueue
from dataclasses import dataclass, field

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import (
    KVCache,
    LRUPromptCache,
    can_trim_prompt_cache,
    make_prompt_cache,
    trim_prompt_cache,
)
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

from impetus.engine.draft import DraftModel
from impetus.engine.request import ANONYMOUS, FinishEvent, RequestHandle, SamplingParams, Tenant, TokenEvent
from impetus.engine.sampling import make_distribution, make_processors, make_sampler
from impetus.engine.scheduler import Scheduler
from impetus.engine.spec_cache import SpecBatchCache
from impetus.engine.speculative import (
    LONG_PAUSE_TOKENS,
    DraftLength,
    NgramIndex,
    Payoff,
    sampled_verdict,
)
from impetus.engine.structured import GrammarProcessor
from impetus.models.loader import LoadedModel
from impetus.system import wired

log = logging.getLogger("impetus.engine")


def _finite(logprob: float) -> float:
    """JSON has no -Infinity or NaN: an impossible token reads -9999.0, as OpenAI reports it."""
    return logprob if math.isfinite(logprob) else -9999.0


class ExactBPEDetokenizer(BPEStreamingDetokenizer):
    """mlx-lm's byte-level BPE detokenizer drops the first leading space (an
    SPM habit); a completion of "The capital of France is" must keep " Paris"."""

    def _maybe_trim_space(self, current_text):
        return current_text


def make_detokenizer_factory(tokenizer):
    template = tokenizer.detokenizer
    if type(template) is BPEStreamingDetokenizer:
        template = ExactBPEDetokenizer(tokenizer._tokenizer)

    def new_detokenizer():
        detokenizer = copy.copy(template)
        detokenizer.reset()
        return detokenizer

    return new_detokenizer


class QueueFull(Exception):
    """Too many requests are already waiting; retry later."""


def _start_native_thread(target) -> None:
    # In a gevent worker `threading` is monkey-patched into greenlets; the
    # engine must be a real OS thread so MLX can compute beside the hub.
    try:
        from gevent.monkey import get_original

        start = get_original("_thread", "start_new_thread")
    except ImportError:  # pragma: no cover - gevent is a dependency
        import _thread

        start = _thread.start_new_thread
    start(target, ())


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    finished: int = 0
    cancelled: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    prefilled_tokens: int = 0  # prompt tokens the model computed (not taken from the prefix cache)
    generated_tokens: int = 0
    steps: int = 0
    preempted: int = 0  # running requests paused to give their slot to another key
    shared_prefixes: int = 0  # prefixes of requests in flight put into the prefix cache for others
    first_tokens_now: int = 0  # first tokens computed before joining the batch (_first_token_now)
    spec_steps: int = 0  # forward passes decoded off mlx-lm's batch with guesses (_spec_step)
    spec_proposed: int = 0  # draft tokens proposed by prompt lookup
    spec_accepted: int = 0  # ... and accepted by the model
    started_at: float = field(default_factory=time.time)


@dataclass
class _Running:
    """Engine-thread state of one request inside the batch."""

    handle: RequestHandle
    detokenizer: object
    stops: list[str]
    holdback: int  # characters kept back: the longest stop string minus one
    prompt_tokens: int
    cached_tokens: int
    sampler: object = None
    processors: list = field(default_factory=list)
    in_cache: int = 0  # prompt tokens in its KV cache so far (cached + prefilled)
    pending_text: str = ""
    generated: int = 0
    stop_string: str | None = None
    paused: tuple | None = None  # (KV cache, its tokens) while paused
    common: dict = field(default_factory=dict)  # waiting handle -> common prefix length
    accepted_guesses: int = 0  # speculative decoding: drafts the model agreed with ...
    rejected_guesses: int = 0  # ... and drafts it did not
    speculate_from: int = 0  # no speculation before this many tokens (a back-off)
    lookup: NgramIndex | None = None  # its prompt and output, for guesses (kept across speculation spells)
    distribution: object = None  # a sampling request's, for speculative sampling (make_distribution)
    payoff: Payoff = field(default_factory=Payoff)  # whether its guesses pay
    draft_cache: list | None = None  # the draft model's KV cache of it, between speculation spells

    @property
    def prefilling(self) -> bool:
        """Part of its prompt is still to be computed."""
        return self.in_cache < self.prompt_tokens - 1

    @property
    def can_pause(self) -> bool:
        """Decoding (prefill done, a token out) and not finishing in the next step."""
        return self.generated >= 1 and self.paused is None


@dataclass
class _Drafting:
    """A request the engine decodes itself, off mlx-lm's batch, with guesses
    (`_spec_step`): its row of the `SpecBatchCache` holds `in_cache`; `last`
    was sent and is not in the cache yet (the next forward pass feeds it)."""

    uid: int  # its key in `_running` (negative: not a generator uid)
    state: _Running
    in_cache: list[int]
    last: int
    draft: DraftLength
    accepted_now: int = 0  # guesses accepted in the step being emitted
    emitting: int = 0  # which token of that step `_on_token` is handling


@dataclass
class _FirstToken:
    """A first token computed by the engine itself, shaped as the generator's responses."""

    uid: int
    token: int
    logprobs: object
    finish_reason: str | None
    prompt_cache: list | None
    all_tokens: list | None


class Engine:
    def __init__(self, loaded: LoadedModel, settings, draft: LoadedModel | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self._new_detokenizer = make_detokenizer_factory(loaded.tokenizer)
        self.max_batch_size = settings.max_batch_size
        self.max_queue = settings.max_queue
        self._settings = settings
        self._inbox: SimpleQueue = SimpleQueue()
        self._queue = Scheduler(settings.max_batch_size, fair=settings.scheduler == "fair")
        self._running: dict[int, _Running] = {}
        self._paused: dict[RequestHandle, _Running] = {}
        self._share_in_flight = settings.share_prefix_in_flight
        self._prefill_step = settings.prefill_step_size or (512 if mx.default_device() == mx.gpu else 128)
        self._prefill_batch = settings.prefill_batch_size
        self._headroom = max(1, settings.max_batch_size // 8)
        self._lone_uid = 0  # negative uids of requests that ended at a first token computed here
        self._prefix_cache = LRUPromptCache(
            max_size=settings.prompt_cache_entries, max_bytes=settings.prompt_cache_bytes
        )
        self._generator = None
        # Prompt lookup speculation (impetus.engine.speculative): while at
        # most `speculative_max_batch` greedy requests run, all decoding, the
        # engine decodes them itself, up to `speculative_max_draft` guesses
        # per request checked in each forward pass.
        # Only where every layer's cache is a plain KVCache, which trims
        # (a sliding window's rotating cache may not).
        plain = all(type(layer) is KVCache for layer in make_prompt_cache(self.model))
        # `draft`: guesses from a small model of the same tokenizer (impetus.engine.draft) instead.
        self._draft = DraftModel(draft.model) if settings.speculative == "draft" and draft is not None else None
        if self._draft is not None and not all(type(c) is KVCache for c in make_prompt_cache(draft.model)):
            self._draft = None
        self._speculative = plain and settings.speculative != "off"
        self._max_draft = settings.speculative_max_draft
        self._spec_max_batch = settings.speculative_max_batch or (16 if mx.default_device() == mx.gpu else 8)
        self._drafting: list[_Drafting] = []  # the rows of `_spec_cache`, in order
        self._spec_cache: SpecBatchCache | None = None
        self.stats = EngineStats()
        self.waiting_by_key: dict[str, int] = {}  # replaced whole by the engine thread
        # Written by the submitting thread only / the engine thread only, so
        # their difference is a race-free count of requests in flight.
        self._submitted = 0
        self._done = 0
        self.last_done_at = time.monotonic()  # when a request last ended (the host's idle release)
        self._alive = False
        self._stopping = False
        self._exited: SimpleQueue = SimpleQueue()
        # Called in the dying engine thread with the error (the host sets it).
        self.on_death = lambda error: None

    # -- caller side (any thread / greenlet) ---------------------------------

    def start(self) -> None:
        self._alive = True
        _start_native_thread(self._run)

    def is_alive(self) -> bool:
        return self._alive

    def inject_fault(self) -> None:
        """Make the engine thread raise at its next command (fault tests)."""
        self._inbox.put(("fault", None))

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the engine thread to finish its current step and exit; wait for it."""
        if not self._alive:
            return
        self._stopping = True
        self._inbox.put(("stop", None))
        try:
            self._exited.get(timeout=timeout)
        except Empty:
            pass

    @property
    def in_flight(self) -> int:
        return self._submitted - self._done

    def submit(self, prompt_tokens: list[int], params: SamplingParams, waiter, tenant: Tenant = ANONYMOUS,
               priority: int | None = None) -> RequestHandle:
        """Queue a generation for `tenant` (who it is for: the scheduler's unit
        of fairness); `priority` may ask for a later one than the tenant's."""
        if not self._alive:
            raise RuntimeError("the engine is not running")
        if self.in_flight >= self.max_batch_size + self.max_queue:
            raise QueueFull(f"{self.max_queue} requests are already waiting for {self.loaded.name}")
        handle = RequestHandle(prompt_tokens, params, waiter, on_cancel=lambda h: self._inbox.put(("cancel", h)),
                               tenant=tenant, priority=priority)
        self._submitted += 1
        self._inbox.put(("submit", handle))
        return handle

    def snapshot(self) -> dict:
        s = self.stats
        return {
            "model": self.loaded.name,
            "alive": self._alive,
            "running": s.running,
            "waiting": s.waiting,
            "max_batch_size": self.max_batch_size,
            "max_queue": self.max_queue,
            "in_flight": self.in_flight,
            "submitted": self._submitted,
            "finished": s.finished,
            "cancelled": s.cancelled,
            "errors": s.errors,
            "prompt_tokens": s.prompt_tokens,
            "cached_prompt_tokens": s.cached_prompt_tokens,
            "prefilled_tokens": s.prefilled_tokens,
            "generated_tokens": s.generated_tokens,
            "preempted": s.preempted,
            "shared_prefixes": s.shared_prefixes,
            "first_tokens_now": s.first_tokens_now,
            "speculative": ("draft" if self._draft else "ngram") if self._speculative else "off",
            "speculative_max_batch": self._spec_max_batch,
            "speculating": len(self._drafting),
            "spec_steps": s.spec_steps,
            "spec_proposed_tokens": s.spec_proposed,
            "spec_accepted_tokens": s.spec_accepted,
            "spec_acceptance_rate": round(s.spec_accepted / s.spec_proposed, 3) if s.spec_proposed else None,
            "scheduler": "fair" if self._queue.fair else "fifo",
            "waiting_by_key": dict(self.waiting_by_key),
            "prefix_cache_entries": len(self._prefix_cache),
            "prefix_cache_bytes": self._prefix_cache.nbytes,
        }

    # -- engine thread --------------------------------------------------------

    def _new_generator(self) -> BatchGenerator:
        eos = [[t] for t in sorted(self.tokenizer.eos_token_ids)]
        generator = BatchGenerator(
            self.model,
            stop_tokens=eos,
            # The engine decides who runs; mlx-lm must not hold a newcomer back
            # because the batch is "full" (it stops prefilling at this size).
            completion_batch_size=self.max_batch_size + self._headroom,
            prefill_batch_size=self._settings.prefill_batch_size,
            prefill_step_size=self._prefill_step,
        )
        wired.disown(generator)  # the worker holds the wired limit, not one generator's lifetime
        return generator

    def _run(self) -> None:
        died: BaseException | None = None
        try:
            self._generator = self._new_generator()
            while not self._stopping:
                busy = bool(self._running or self._queue)
                self._take_commands(block=not busy)
                if self._drafting and (self._queue or self._stopping):
                    self._stop_speculating()  # newcomers: back into mlx-lm's batch
                self._admit()
                if not self._drafting and self._can_speculate():
                    self._start_speculating()
                if self._drafting:
                    self._spec_step_or_fail()
                elif self._running:
                    self._step()
                self.stats.running = len(self._running)
                self.stats.waiting = len(self._queue)
                self.waiting_by_key = self._queue.waiting_by_tenant()
        except BaseException as error:  # a bug or a fault: the thread is gone either way
            died = error
            log.critical("the engine thread for %s died", self.loaded.name, exc_info=True)
        finally:
            self._alive = False
            for state in list(self._running.values()):
                self._finish(state, "error", error="the engine stopped")
            for handle in self._queue.handles():
                self._queue.remove(handle)
                self._fail_waiting(handle, "the engine stopped")
            self._exited.put(True)
        if died is not None:
            self.on_death(died)

    def _take_commands(self, block: bool) -> None:
        try:
            command = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except Empty:
            return
        while True:
            kind, handle = command
            if kind == "submit":
                handle.queued_step = self.stats.steps
                self._queue.add(handle)
            elif kind == "cancel":
                self._cancel(handle)
            elif kind == "stop":
                self._stopping = True
            elif kind == "fault":  # IMPETUS_DEBUG_FAULTS only (POST /v1/admin/debug/fault)
                raise RuntimeError("a fault injected through the debug admin endpoint")
            try:
                command = self._inbox.get_nowait()
            except Empty:
                return

    def _cancel(self, handle: RequestHandle) -> None:
        if self._queue.remove(handle):
            self.stats.cancelled += 1
            state = self._paused.pop(handle, None)
            if state is not None:  # its KV cache goes with it
                state.paused = None
                self._finish(state, "cancelled")
            else:
                self._push_finish(handle, FinishEvent("cancelled", prompt_tokens=len(handle.prompt_tokens)))
            return
        uid = self._uid_of(handle)
        if uid is not None:
            row = self._drafting_row(uid)
            if row is not None:
                self._drop_rows([row])  # its KV cache goes with it
            else:
                self._generator.remove([uid])
            self.stats.cancelled += 1
            self._finish(self._running[uid], "cancelled", uid=uid)

    def _uid_of(self, handle: RequestHandle) -> int | None:
        """The generator's uid of a request in the batch (None: not in it)."""
        return next((uid for uid, state in self._running.items() if state.handle is handle), None)

    def _admit(self) -> None:
        """Give free batch slots to waiting requests, in the scheduler's order.
        When the batch is full and the scheduler says a waiting request
        deserves a slot (its key is under its share, or it has an earlier
        priority), it gets one of `max_batch_size / 8` spare slots; once those
        are taken, a running request the scheduler names (a key over its
        share, or a later priority) is paused to make room. The spare slots
        make the common case free: a key asking now and then beside a flood
        joins the batch at once, nobody's answer is paused, and the key over
        its share refills no slot until the batch is back to its size.
        Pausing every time cost 7 % of the flood's throughput (pause and
        resume, and paused answers finishing late); measured in
        benchmarks/README.md (fairness).

        At most `prefill_batch_size` requests are admitted with prompt left
        to compute (mlx-lm prefills that many together, in arrival order):
        the rest wait here, where the scheduler can still put a newcomer of
        another key first. Admitting a whole flood at once put key B's short
        prompt behind 32 of key A's (TTFT 2.2 s where a step is 0.2 s).

        A request that shares a long prefix with one being prefilled is
        skipped until that prefix is in the prefix cache. The newcomers are
        then inserted shortest prompt first: mlx-lm prefills up to
        `prefill_batch_size` prompts together, a chunk of each per step padded
        to the longest chunk, so short prompts queued behind long ones pay for
        the long ones' padding. Measured on a 2-core CPU, 16 streams of mixed
        prompts (a line, ~250 and ~900 tokens), 128-token steps: TTFT p50
        13.0 s in arrival order, 6.9 s shortest first."""
        if not self._queue:
            return
        free = self.max_batch_size - len(self._running)
        prefilling = sum(1 for state in self._running.values() if state.prefilling)
        admitted, alone = [], set()
        order = self._queue.order()
        for handle in order:
            resuming = handle in self._paused
            # Its key's only request, beside others' work: its first token is computed here
            # (one a round), so it needs no prefill slot of the generator.
            lone = not alone and not resuming and not self._queue.running[handle.tenant.id] and bool(self._running)
            if not resuming and not lone and prefilling >= self._prefill_batch:
                continue  # only resumes (no prompt to compute) until a prefill slot frees
            if free <= 0:
                pausable = [state.handle for state in self._running.values() if state.can_pause]
                victim = self._queue.victim(handle, pausable)
                if victim is None:
                    break
                if self._shares_prefix(handle, admitted):
                    continue
                if free <= -self._headroom:  # the spare slots are taken too: pause one
                    self._pause(victim)
                    free += 1
            elif self._shares_prefix(handle, admitted):
                continue
            if lone:
                alone.add(handle)
            self._queue.remove(handle)
            self._queue.started(handle)  # counts for the next decisions of this round
            admitted.append(handle)
            free -= 1
            prefilling += not resuming and not lone
        now = time.monotonic()
        position, taken = 0, set(admitted)
        for handle in order:
            if handle in taken:
                handle.queue_position = 0
            else:
                position += 1
                handle.queue_position = position
        for handle in sorted(admitted, key=lambda h: len(h.prompt_tokens)):
            if handle.admitted_at is None:
                handle.admitted_at, handle.admitted_step = now, self.stats.steps
            try:
                state = self._paused.pop(handle, None)
                self._resume(state) if state is not None else self._insert(handle, handle in alone)
            except Exception as error:  # a bad request must not stop the engine
                log.exception("could not start a generation on %s", self.loaded.name)
                self._queue.stopped(handle)
                self._fail_waiting(handle, f"could not start generation: {error}")

    def _insert(self, handle: RequestHandle, now: bool = False) -> None:
        """Into the batch from the longest cached prefix; `now`: a short
        prompt is computed here and its first token sent at once
        (`_first_token_now`)."""
        prompt = handle.prompt_tokens
        params = handle.params
        cache, rest = self._prefix_cache.fetch_nearest_cache(self.loaded.name, prompt)
        if cache is not None and not rest:
            # Whole prompt cached: recompute its last token to get logits.
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        cached = len(prompt) - len(rest)
        sampler, processors = make_sampler(params), make_processors(params, self.tokenizer)
        stops = [s for s in params.stop if s]
        state = _Running(
            handle=handle,
            detokenizer=self._new_detokenizer(),
            stops=stops,
            holdback=max((len(s) for s in stops), default=1) - 1,
            prompt_tokens=len(prompt),
            cached_tokens=cached,
            sampler=sampler,
            processors=processors,
            in_cache=cached,
        )
        self.stats.prompt_tokens += len(prompt)
        self.stats.cached_prompt_tokens += cached
        self.stats.prefilled_tokens += len(rest)
        self._queue.charge(handle.tenant, len(rest))
        if now and len(rest) <= self._prefill_step:
            self._first_token_now(state, cache, rest)
            return
        (uid,) = self._generator.insert(
            [rest],
            max_tokens=[params.max_tokens],
            caches=[cache],
            all_tokens=[prompt[:cached]],
            samplers=[sampler],
            logits_processors=[processors],
        )
        self._running[uid] = state

    def _first_token_now(self, state: _Running, cache, rest: list[int]) -> None:
        """Compute a short prompt (at most one prefill chunk) and sample its
        first token here, send that token, and only then let the request join
        the batch. In mlx-lm's generator a prompt becomes a sequence one step
        after its last chunk, and its first token comes out one step after
        that, and every step decodes the whole batch (~0.25 s at 32 sequences
        on 2 cores): a short question beside a flood waited ~2.5 such steps.
        Here it waits for the step in progress and its own prompt. Used for
        a key's only request beside other keys' work, one per step: one
        prompt at a time is slower than mlx-lm's batched prefill (a flood of
        40 short prompts each computed alone: 13 % fewer tokens/s). The
        sampler and logits processors are the request's own, called as the
        generator calls them, so the output is the same."""
        handle, prompt = state.handle, state.handle.prompt_tokens
        if cache is None:
            cache = make_prompt_cache(self.model)
        with mx.stream(self._generator.stream):
            logits = self.model(mx.array([rest]), cache=cache)[:, -1, :]
            context = mx.array(prompt, dtype=mx.int32)
            for processor in state.processors:
                logits = processor(context, logits)
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            token = state.sampler(logprobs) if state.sampler is not None else mx.argmax(logprobs, axis=-1)
            mx.eval(token, logprobs, [c.state for c in cache])
        token = int(token.item())
        state.in_cache = len(prompt)
        self.stats.first_tokens_now += 1
        finish = "stop" if token in self.tokenizer.eos_token_ids else (
            "length" if handle.params.max_tokens <= 1 else None)
        if finish is None:
            (uid,) = self._generator.insert(
                [[token]],
                max_tokens=[handle.params.max_tokens - 1],
                caches=[cache],
                all_tokens=[list(prompt)],
                samplers=[state.sampler],
                logits_processors=[state.processors],
            )
        else:  # done at its first token: it never joins the batch
            self._lone_uid -= 1
            uid = self._lone_uid
        self._running[uid] = state
        self._on_token(_FirstToken(uid, token, logprobs[0], finish, cache if finish else None,
                                   list(prompt) if finish else None), state)

    # -- pausing (preemption) ----------------------------------------------------

    def _pause(self, handle: RequestHandle) -> None:
        """Take a decoding request out of the batch, keeping its KV cache; it
        goes back to the front of its key's queue and resumes where it was."""
        uid = self._uid_of(handle)
        state = self._running[uid]
        cache, tokens = self._generator.remove([uid], return_prompt_caches=True)[uid]
        mx.eval([c.state for c in cache])
        del self._running[uid]
        state.paused = (cache, list(tokens))
        self._paused[handle] = state
        self._queue.stopped(handle)
        self._queue.add(handle, front=True)
        self.stats.preempted += 1

    def _resume(self, state: _Running) -> None:
        """Back into the batch. Its cache holds every token it has sent,
        the last one included; the next token was sampled but not sent and
        is lost with the batch row, so the last token is fed again (greedy
        output is unchanged; a sampled one draws that token afresh)."""
        cache, tokens = state.paused
        state.paused = None
        trim_prompt_cache(cache, 1)
        for processor in state.processors:
            if isinstance(processor, GrammarProcessor):
                processor.resume()
        (uid,) = self._generator.insert(
            [tokens[-1:]],
            max_tokens=[state.handle.params.max_tokens - state.generated],
            caches=[cache],
            all_tokens=[tokens[:-1]],
            samplers=[state.sampler],
            logits_processors=[state.processors],
        )
        self._running[uid] = state

    # -- a prefix shared by requests in flight -----------------------------------

    def _shares_prefix(self, handle: RequestHandle, admitted: list[RequestHandle]) -> bool:
        """True while `handle` should wait: its prompt shares at least a
        prefill chunk more than the prefix cache holds with a request whose
        prefill has not got that far yet (or that is being admitted in this
        round). Once it has, that prefix is copied into the prefix cache
        (`_snapshot`) and the handle starts from it."""
        if not self._share_in_flight:
            return False
        prompt = handle.prompt_tokens
        chunk = self._prefill_step
        if len(prompt) <= chunk:
            return False
        cached = None
        for other in admitted:
            common = min(_common_prefix(prompt, other.prompt_tokens, chunk), len(prompt) - 1)
            if common >= chunk:
                cached = self._cached_length(prompt) if cached is None else cached
                if common - cached >= chunk:
                    return True
        best, common = None, 0
        for state in self._running.values():
            if handle not in state.common:
                state.common[handle] = _common_prefix(prompt, state.handle.prompt_tokens, chunk)
            if state.common[handle] > common:
                best, common = state, state.common[handle]
        common = min(common, len(prompt) - 1)
        if common < chunk or common - (self._cached_length(prompt) if cached is None else cached) < chunk:
            return False
        if best.in_cache < common:
            return True
        self._snapshot(best, common)
        return False

    def _cached_length(self, prompt: list[int]) -> int:
        """How much of the prompt the prefix cache can give (without copying anything)."""
        found = self._prefix_cache._trie.search(self.loaded.name, prompt)
        if found.exact is not None:
            return len(prompt)
        return max(len(found.shorter or ()), found.common_prefix if found.longer is not None else 0)

    def _snapshot(self, state: _Running, length: int) -> None:
        """Put the first `length` tokens of a running request's KV cache into
        the prefix cache."""
        uid = self._uid_of(state.handle)
        cache, tokens = self._generator.extract_cache([uid])[uid]
        prefix = state.handle.prompt_tokens[:length]
        if len(tokens) < length or tokens[:length] != prefix or not can_trim_prompt_cache(cache):
            return
        trim_prompt_cache(cache, len(tokens) - length)
        for layer in cache:
            if type(layer) is KVCache:  # drop the trimmed tail from memory too
                layer.keys = mx.contiguous(layer.keys[..., :layer.offset, :])
                layer.values = mx.contiguous(layer.values[..., :layer.offset, :])
        mx.eval([c.state for c in cache])
        self._prefix_cache.insert_cache(self.loaded.name, list(prefix), cache)
        self.stats.shared_prefixes += 1

    def _step(self) -> None:
        try:
            prompt_responses, responses = self._generator.next()
        except Exception:
            # Fail the batch, not the process: start over with a fresh generator.
            message = traceback.format_exc(limit=3)
            log.exception("engine step failed for %s; failing its %d running requests",
                          self.loaded.name, len(self._running))
            self.stats.errors += 1
            for uid, state in list(self._running.items()):
                self._finish(state, "error", uid=uid, error=message)
            self._generator = self._new_generator()
            return
        self.stats.steps += 1
        for progress in prompt_responses:
            state = self._running.get(progress.uid)
            if state is not None:
                state.in_cache = state.cached_tokens + progress.progress[0]
        for response in responses:
            state = self._running.get(response.uid)
            if state is None:  # removed (cancelled) while this step ran
                continue
            self._on_token(response, state)

    def _on_token(self, response, state: _Running) -> None:
        state.generated += 1
        state.in_cache = state.prompt_tokens + state.generated
        self.stats.generated_tokens += 1
        self._queue.charge(state.handle.tenant, 1)
        finish = response.finish_reason
        # An end-of-sequence token ends the text; it is not part of it.
        is_eos = finish == "stop"
        if not is_eos:
            state.detokenizer.add_token(response.token)
        if finish is not None:
            state.detokenizer.finalize()
        state.pending_text += state.detokenizer.last_segment

        for stop in state.stops:
            index = state.pending_text.find(stop)
            if index >= 0:
                state.pending_text = state.pending_text[:index]
                state.stop_string = stop
        if state.stop_string is not None:
            finish = "stop"

        if finish is not None:
            visible, state.pending_text = state.pending_text, ""
        elif state.holdback:
            cut = max(0, len(state.pending_text) - state.holdback)
            visible, state.pending_text = state.pending_text[:cut], state.pending_text[cut:]
        else:
            visible, state.pending_text = state.pending_text, ""

        logprob = top = None
        if state.handle.params.logprobs:
            logprob, top = self._logprobs(response, state.handle.params.top_logprobs)
        state.handle.push(TokenEvent(response.token, visible, logprob, top))

        if finish is not None:
            row = self._drafting_row(response.uid) if response.finish_reason is None else None
            if row is not None:
                cache, tokens = self._row_cache(row)  # a stop string, decoding off the batch
            elif response.finish_reason is None:  # a stop string: still in the batch
                caches = self._generator.remove([response.uid], return_prompt_caches=True)
                cache, tokens = caches.get(response.uid, (None, None))
            else:
                cache, tokens = response.prompt_cache, response.all_tokens
            if cache is not None:
                # The extracted cache is a lazy slice of the whole batch's KV
                # buffers: until evaluated it keeps all of them alive. Copy it
                # out now (measured: 40 mixed streams left 3.8 GB held by a
                # prefix cache that counted 0.35 GB; 0.5 GB after this).
                mx.eval([c.state for c in cache])
                self._prefix_cache.insert_cache(self.loaded.name, list(tokens), cache)
            self._finish(state, finish, uid=response.uid)

    # -- speculation: requests decoded off the batch, with guesses ----------------

    def _wants_guesses(self, state: _Running) -> bool:
        """No grammar (its matcher takes one token at a time), not backing
        off, and more than one token to go."""
        return (not _has_grammar(state) and state.generated >= state.speculate_from
                and state.handle.params.max_tokens - state.generated > 1)

    def _can_speculate(self) -> bool:
        """Nobody waiting, at most `speculative_max_batch` requests running,
        all decoding, none with a seed (a seeded request's draws must not
        depend on its company), and at least one worth guessing for.
        Requests with processors ride along with no guesses."""
        if not self._speculative or not self._running or self._queue or self._paused:
            return False
        if len(self._running) > self._spec_max_batch:
            return False
        if any(uid < 0 or state.prefilling or state.generated < 1
               or (state.sampler is not None and state.handle.params.seed is not None)
               for uid, state in self._running.items()):
            return False
        return any(self._wants_guesses(state) for state in self._running.values())

    def _start_speculating(self) -> None:
        uids = list(self._running)
        caches = self._generator.remove(uids, return_prompt_caches=True)
        rows, row_caches = [], []
        for uid in uids:
            cache, tokens = caches[uid]
            trim_prompt_cache(cache, 1)  # the last token sent is fed again (as `_resume` does)
            state = self._running.pop(uid)
            for processor in state.processors:
                if isinstance(processor, GrammarProcessor):
                    processor.resume()  # it has taken in the last token already
            if state.sampler is not None and state.distribution is None:
                state.distribution = make_distribution(state.handle.params)
            if state.lookup is None:
                # The client's expected output (`prediction`) first, as if said before the prompt.
                state.lookup = NgramIndex()
                state.lookup.extend(state.handle.params.prediction)
            seen = len(state.lookup.tokens) - len(state.handle.params.prediction)
            state.lookup.extend(tokens[seen:])
            state.lookup.following = None
            self._lone_uid -= 1
            rows.append(_Drafting(self._lone_uid, state, list(tokens[:-1]), tokens[-1], DraftLength(self._max_draft)))
            row_caches.append(cache)
            self._running[self._lone_uid] = state
        self._spec_cache = SpecBatchCache.merge(row_caches)
        self._drafting = rows
        if self._draft is not None:
            with mx.stream(self._generator.stream):
                self._draft.start([([*row.in_cache, row.last], row.state.draft_cache) for row in rows])

    def _stop_speculating(self) -> None:
        """Every row back into mlx-lm's batch, from its own tokens' KV."""
        rows, cache = self._drafting, self._spec_cache
        caches = [cache.extract(i) for i in range(len(rows))]
        if self._draft is not None:  # kept for the next spell: its prompt is not prefilled again
            for i, row in enumerate(rows):
                row.state.draft_cache = self._draft.extract(i)
        self._drafting, self._spec_cache = [], None
        for row in rows:
            del self._running[row.uid]
        uids = self._generator.insert(
            [[row.last] for row in rows],
            max_tokens=[row.state.handle.params.max_tokens - row.state.generated for row in rows],
            caches=caches,
            all_tokens=[row.in_cache for row in rows],
            samplers=[row.state.sampler for row in rows],
            logits_processors=[row.state.processors for row in rows],
        )
        for uid, row in zip(uids, rows):
            self._running[uid] = row.state

    def _drafting_row(self, uid: int) -> _Drafting | None:
        return next((row for row in self._drafting if row.uid == uid), None)

    def _drop_rows(self, rows: list[_Drafting]) -> None:
        if len(rows) == len(self._drafting):
            self._drafting, self._spec_cache = [], None
            return
        indices = [self._drafting.index(row) for row in rows]
        self._spec_cache.remove(indices)
        if self._draft is not None:
            self._draft.remove(indices)
        self._drafting = [row for row in self._drafting if row not in rows]

    def _spec_step_or_fail(self) -> None:
        """As `_step`: a failed forward pass fails its requests, not the engine."""
        try:
            self._spec_step()
        except Exception:
            log.exception("speculative step failed for %s", self.loaded.name)
            self.stats.errors += 1
            message = traceback.format_exc(limit=3)
            rows, self._drafting, self._spec_cache = self._drafting, [], None
            for row in rows:
                if row.uid in self._running:
                    self._finish(row.state, "error", uid=row.uid, error=message)

    def _spec_step(self) -> None:
        """One forward pass over every row's last token and its guesses
        (up to K, each row its own K, none for some); a row keeps the guesses
        the model agrees with, then the model's own next token. The rejected
        positions become holes in the cache (`SpecBatchCache.keep`), so each
        row's cache holds exactly the tokens it sent but the newest."""
        rows, cache = self._drafting, self._spec_cache
        wanted, paying = self._guesses_wanted(rows)
        with mx.stream(self._generator.stream):
            if self._draft is not None:
                drafts = self._draft.propose(wanted)
            else:
                drafts = [row.state.lookup.propose(k) for row, k in zip(rows, wanted)]
            width = 1 + max(len(draft) for draft in drafts)
            inputs = mx.array([[row.last, *draft] + [0] * (width - 1 - len(draft))
                               for row, draft in zip(rows, drafts)])
            logprobs, verdicts = self._check(rows, drafts, self.model(inputs, cache=cache.layers))
        news = []
        for row, draft, (accepted, token), pays in zip(rows, drafts, verdicts, paying):
            news.append([*draft[:accepted], token])
            row.in_cache += [row.last, *draft[:accepted]]
            row.last, row.accepted_now = token, accepted
            self._learn(row, draft, accepted, pays, len(news[-1]))
            row.state.lookup.accept(news[-1])
        cache.keep([1 + accepted for accepted, _ in verdicts], width)
        if self._draft is not None:
            self._draft.settle(news, [accepted for accepted, _ in verdicts])
        self.stats.spec_steps += 1
        self.stats.steps += 1
        eos = self.tokenizer.eos_token_ids
        done = []
        for row, new, row_logprobs in zip(rows, news, logprobs):
            state = row.state
            for position, token in enumerate(new):
                row.emitting = position
                finish = "stop" if token in eos else (
                    "length" if state.generated + 1 >= state.handle.params.max_tokens else None)
                row_cache, tokens = self._row_cache(row) if finish else (None, None)
                self._on_token(_FirstToken(row.uid, token, row_logprobs[position], finish, row_cache, tokens), state)
                if row.uid not in self._running:  # finished: by length, end of sequence or a stop string
                    done.append(row)
                    break
        if done:
            self._drop_rows(done)
        if self._drafting and all(self._paused_for(row.state) >= LONG_PAUSE_TOKENS for row in self._drafting):
            self._stop_speculating()  # nothing to guess for a while: mlx-lm's batch decodes faster

    def _guesses_wanted(self, rows: list[_Drafting]) -> tuple[list[int], list[bool]]:
        """How many guesses each row gets, and whether it pays for them. The
        pass computes every row to the widest row's width anyway: a row
        pausing its guesses (`Payoff`) fills its padding with guesses, for
        free, and a good run of them ends its pause."""
        paying = [self._wants_guesses(row.state) for row in rows]
        left = [row.state.handle.params.max_tokens - row.state.generated - 1 for row in rows]
        wanted = [min(row.draft.current, n) if pays else 0 for row, n, pays in zip(rows, left, paying)]
        widest = max(wanted)
        for i, row in enumerate(rows):
            if not paying[i] and not _has_grammar(row.state):
                wanted[i] = min(widest, left[i])
        return wanted, paying

    def _check(self, rows: list[_Drafting], drafts: list[list[int]], logits: mx.array) -> tuple[list, list]:
        """Each row's log-probabilities and verdict (guesses kept, the token
        after them): greedy rows keep the guesses the argmax agrees with,
        sampling rows follow `sampled_verdict`. Logits processors (penalties,
        `logit_bias`) see each position with the tokens before it, as the
        generator would have shown them; a row with a grammar has no guesses
        and is processed and sampled as the generator does."""
        logprobs, chosen = [], []
        for i, (row, draft) in enumerate(zip(rows, drafts)):
            state, row_logits = row.state, logits[i, :1 + len(draft)]
            if state.processors:  # each position sees the tokens before it, guesses included
                context = [*row.in_cache, row.last, *draft]
                positions = []
                for position in range(1 + len(draft)):
                    position_logits = row_logits[position:position + 1]
                    before = mx.array(context[:len(row.in_cache) + 1 + position])
                    for processor in state.processors:
                        position_logits = processor(before, position_logits)
                    positions.append(position_logits)
                row_logits = mx.concatenate(positions, axis=0)
            logprobs.append(row_logits - mx.logsumexp(row_logits, axis=-1, keepdims=True))
            if state.sampler is None:
                chosen.append(mx.argmax(logprobs[-1], axis=-1))
            else:  # a grammar's row has no guesses: its sampler draws as in the generator
                chosen.append(state.sampler(logprobs[-1]) if _has_grammar(state) else None)
        mx.eval([c for c in chosen if c is not None], logprobs)
        verdicts = []
        for row, draft, row_chosen, row_logprobs in zip(rows, drafts, chosen, logprobs):
            if row_chosen is None:
                verdicts.append(sampled_verdict(row.state.distribution(row_logprobs), draft))
                continue
            row_chosen = row_chosen.tolist()
            accepted = 0
            while accepted < len(draft) and draft[accepted] == row_chosen[accepted]:
                accepted += 1
            verdicts.append((accepted, row_chosen[accepted]))
        return logprobs, verdicts

    def _learn(self, row: _Drafting, draft: list[int], accepted: int, paying: bool, new: int) -> None:
        """Count a row's guesses, and adapt its K and its pauses to them."""
        state = row.state
        self.stats.spec_proposed += len(draft)
        self.stats.spec_accepted += accepted
        state.accepted_guesses += accepted
        state.rejected_guesses += len(draft) - accepted
        if paying:
            row.draft.update(len(draft), accepted)
            pause = state.payoff.update(len(draft), accepted)
            if pause:  # little to copy here for now
                state.speculate_from = state.generated + new + pause
        elif draft and 2 * accepted >= len(draft) and accepted >= 2:
            state.speculate_from = 0  # copying again

    def _paused_for(self, state: _Running) -> float:
        """Tokens before a request guesses again (inf: it never will)."""
        if _has_grammar(state) or state.handle.params.max_tokens - state.generated <= 1:
            return math.inf
        return state.speculate_from - state.generated

    def _row_cache(self, row: _Drafting) -> tuple[list, list[int]]:
        """A copy of a row's KV cache and its tokens up to the token being
        emitted: an accepted guess's KV is in the cache, the model's own last
        token's is not."""
        cache = self._spec_cache.extract(self._drafting.index(row))
        beyond = max(0, row.accepted_now - 1 - row.emitting)
        if beyond:
            trim_prompt_cache(cache, beyond)
        return cache, row.in_cache[:len(row.in_cache) - beyond]

    @staticmethod
    def _logprobs(response, k: int):
        logprobs = response.logprobs
        chosen = _finite(logprobs[response.token].item())
        top = None
        if k > 0:
            ids = mx.argpartition(-logprobs, kth=k - 1)[:k]
            values = logprobs[ids]
            order = mx.argsort(-values)
            top = [(token, _finite(value)) for token, value in zip(ids[order].tolist(), values[order].tolist())]
        return chosen, top

    def _finish(self, state: _Running, reason: str, uid: int | None = None, error: str | None = None):
        if uid is not None and self._running.pop(uid, None) is not None:
            self._queue.stopped(state.handle)
        if reason in ("stop", "length"):
            self.stats.finished += 1
        self._push_finish(
            state.handle,
            FinishEvent(
                reason,
                text=state.pending_text if reason in ("stop", "length") else "",
                prompt_tokens=state.prompt_tokens,
                completion_tokens=state.generated,
                cached_tokens=state.cached_tokens,
                error=error,
                stop_string=state.stop_string,
                accepted_prediction_tokens=state.accepted_guesses,
                rejected_prediction_tokens=state.rejected_guesses,
            ),
        )

    def _fail_waiting(self, handle: RequestHandle, message: str) -> None:
        self.stats.errors += 1
        self._push_finish(handle, FinishEvent("error", prompt_tokens=len(handle.prompt_tokens), error=message))

    def _push_finish(self, handle: RequestHandle, event: FinishEvent) -> None:
        """Every request ends here exactly once."""
        self.last_done_at = time.monotonic()
        self._done += 1
        handle.push(event)


def _has_grammar(state: _Running) -> bool:
    return any(isinstance(processor, GrammarProcessor) for processor in state.processors)


def _common_prefix(a: list[int], b: list[int], chunk: int) -> int:
    """The length of the common prefix of two prompts; 0 when it is shorter
    than `chunk` (checked first: most pairs differ within it)."""
    limit = min(len(a), len(b))
    if limit < chunk or a[:chunk] != b[:chunk]:
        return 0
    low, high = chunk, limit  # a[:low] == b[:low]
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low
