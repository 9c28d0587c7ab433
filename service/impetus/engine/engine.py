"""The engine: one native thread per loaded model, continuous batching.

A request's life, read down `Engine._run`:

1. A greenlet calls `Engine.submit(prompt_tokens, params, waiter)`. The request
   goes into `_inbox` (a C-level SimpleQueue: never blocks the caller, and
   gevent's monkey-patching does not touch it) and the caller gets a handle.
2. The engine thread queues it in the `Scheduler` (fair between keys, by
   priority). `Admission` gives it a slot when the batch has a free one, or
   the scheduler pauses a running request of a key over its share to make
   one, or it waits for a long prefix of its prompt that another request is
   computing (`InFlightPrefixes`: N agents with one system prompt prefill
   it once). The `Batch` inserts it into mlx-lm's `BatchGenerator`, from the
   longest cached prefix of its prompt (`LRUPromptCache`), so a follow-up
   turn of a conversation only prefills what is new.
3. Each step prefills newcomers and decodes one token for everyone running;
   every token is detokenized, checked against the request's stop strings
   and pushed to its handle, which wakes the caller (`tokens.emit`). While
   at most `speculative_max_batch` requests run, all decoding and none
   seeded, the `Speculator` takes them out of mlx-lm's batch and decodes
   them itself, checking guesses of their next tokens in one forward pass;
   a newcomer sends them all back into the batch.
4. A finished request leaves the batch; its KV cache goes into the prefix
   cache. A cancelled one (client gone) is removed at the next command.

This module holds the loop and its commands (submit, cancel, stop, fault)
and the caller's side; it computes nothing with the model itself. MLX
releases the GIL while it computes, so the greenlets serving HTTP keep
running while the model works.
"""

from __future__ import annotations

import logging
import time
from _queue import Empty, SimpleQueue

from impetus.engine.activity import KEYSTROKE_S, YIELD_S, HostActivity
from impetus.engine.admission import Admission
from impetus.engine.batch import Batch
from impetus.engine.media import Media, cache_key
from impetus.engine.request import ANONYMOUS, BATCH, FinishEvent, RequestHandle, SamplingParams, Tenant
from impetus.engine.running import EngineStats
from impetus.engine.scheduler import Scheduler
from impetus.engine.speculator import Speculator
from impetus.models.loader import LoadedModel

log = logging.getLogger("impetus.engine")


class QueueFull(Exception):
    """Too many requests are already waiting; retry later."""


class TooLargeForMemory(Exception):
    """The request's KV cache alone would not fit this worker's memory budget."""


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


class Engine:
    def __init__(self, loaded: LoadedModel, settings, draft: LoadedModel | None = None, kv_ledger=None,
                 activity: HostActivity | None = None):
        """`activity`: the host's interactive requests in flight (engine.activity), which a step of
        batch-priority requests only waits for; None: never waits."""
        self.loaded = loaded
        self.activity = activity
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_batch_size = settings.max_batch_size
        self.max_queue = settings.max_queue
        self._inbox: SimpleQueue = SimpleQueue()
        self.stats = EngineStats()
        self._queue = Scheduler(settings.max_batch_size, fair=settings.scheduler == "fair")
        self.batch = Batch(loaded, settings, self._queue, self.stats, kv_ledger)
        self.admission = Admission(self.batch, self._queue, settings)
        # Prompt lookup speculation (impetus.engine.speculative): while at
        # most `speculative_max_batch` greedy requests run, all decoding, the
        # speculator decodes them itself, up to `speculative_max_draft`
        # guesses per request checked in each forward pass.
        self.speculator = Speculator(self.batch, self._queue, settings, draft)
        self.waiting_by_key: dict[str, int] = {}  # replaced whole by the engine thread
        # Written by the submitting thread only / the engine thread only
        # (`Batch.done`), so their difference is a race-free count of
        # requests in flight.
        self._submitted = 0
        self.keystrokes_here = 0  # editors' requests in flight here (api.generation counts them)
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
        return self._submitted - self.batch.done

    @property
    def last_done_at(self) -> float:
        """When a request last ended (the host's idle release)."""
        return self.batch.last_done_at

    def submit(self, prompt_tokens: list[int], params: SamplingParams, waiter, tenant: Tenant = ANONYMOUS,
               priority: int | None = None, media: Media | None = None) -> RequestHandle:
        """Queue a generation for `tenant` (who it is for: the scheduler's unit
        of fairness); `priority` may ask for a later one than the tenant's;
        `media`: the prompt's images (a vision-language model's)."""
        if media is not None and (self.loaded.vision is None or media.end >= len(prompt_tokens)):
            raise ValueError("images need a vision-language model and a prompt that goes on after them")
        if not self._alive:
            raise RuntimeError("the engine is not running")
        if self.in_flight >= self.max_batch_size + self.max_queue:
            raise QueueFull(f"{self.max_queue} requests are already waiting for {self.loaded.name}")
        too_large = self.batch.kv.too_large(len(prompt_tokens), params.max_tokens)
        if too_large:
            raise TooLargeForMemory(too_large)
        handle = RequestHandle(prompt_tokens, params, waiter, on_cancel=lambda h: self._inbox.put(("cancel", h)),
                               tenant=tenant, priority=priority, media=media,
                               cache_key=cache_key(prompt_tokens, media))
        self._submitted += 1
        self._inbox.put(("submit", handle))
        return handle

    def snapshot(self) -> dict:
        s, speculator = self.stats, self.speculator
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
            "image_prefills": s.image_prefills,
            "speculative": speculator.mode,
            "speculative_max_batch": speculator.max_batch,
            "speculating": len(speculator.rows),
            "spec_steps": s.spec_steps,
            "spec_proposed_tokens": s.spec_proposed,
            "spec_accepted_tokens": s.spec_accepted,
            "spec_acceptance_rate": round(s.spec_accepted / s.spec_proposed, 3) if s.spec_proposed else None,
            "scheduler": "fair" if self._queue.fair else "fifo",
            "waiting_by_key": dict(self.waiting_by_key),
            "prefix_points": s.prefix_points,
            "kv_cache": {"bits": self.batch.kv_bits, **self.batch.kv.size.as_dict(), "bytes": s.kv_bytes,
                         "bytes_peak": s.kv_bytes_peak, "waits": s.kv_waits},
            **self.batch.prefixes.snapshot(),
        }

    # -- engine thread --------------------------------------------------------

    def _run(self) -> None:
        died: BaseException | None = None
        batch, speculator = self.batch, self.speculator
        try:
            batch.generator = batch.new_generator()
            while not self._stopping:
                # Requests that wait for KV room another engine holds: no spinning.
                busy = bool(batch.running) or (bool(self._queue) and not self.admission.stalled)
                self._take_commands(block=not busy)
                if speculator.rows and (self._queue or self._stopping):
                    speculator.stop()  # newcomers: back into mlx-lm's batch
                self.admission.admit()
                if speculator.can_start():
                    speculator.start()
                if speculator.rows or batch.running:
                    if self._yields():
                        time.sleep(YIELD_S)  # a person's request elsewhere on the host goes first
                    self._let_a_keystroke_through()
                if speculator.rows:
                    speculator.step_or_fail()
                elif batch.running:
                    batch.step()
                self.stats.running = len(batch.running)
                self.stats.waiting = len(self._queue)
                self.waiting_by_key = self._queue.waiting_by_tenant()
        except BaseException as error:  # a bug or a fault: the thread is gone either way
            died = error
            log.critical("the engine thread for %s died", self.loaded.name, exc_info=True)
        finally:
            self._alive = False
            for state in list(batch.running.values()):
                batch.finish(state, "error", error="the engine stopped")
            for handle in self._queue.handles():
                self._queue.remove(handle)
                batch.fail_waiting(handle, "the engine stopped")
            batch.kv.close()
            self._exited.put(True)
        if died is not None:
            self.on_death(died)

    def _yields(self) -> bool:
        """Only batch-priority requests run here, and someone on the host waits for an answer."""
        return self.activity is not None and all(s.handle.priority >= BATCH for s in self.batch.running.values()) \
            and all(h.priority >= BATCH for h in self._queue.handles()) and self.activity.interactive() > 0

    def _let_a_keystroke_through(self) -> None:
        """An editor's keystroke runs in another engine of the host: wait for it, at most KEYSTROKE_S."""
        if self.activity is None or self.keystrokes_here:
            return
        deadline = time.monotonic() + KEYSTROKE_S
        while self.activity.keystrokes() > 0 and time.monotonic() < deadline:
            time.sleep(0.005)

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
        batch = self.batch
        if self._queue.remove(handle):
            self.stats.cancelled += 1
            state = batch.paused.pop(handle, None)
            if state is not None:  # its KV cache goes with it
                state.paused = None
                batch.finish(state, "cancelled")
            else:
                batch.push_finish(handle, FinishEvent("cancelled", prompt_tokens=len(handle.prompt_tokens)))
            return
        uid = batch.uid_of(handle)
        if uid is not None:
            row = self.speculator.row_of(uid)
            if row is not None:
                self.speculator.drop([row])  # its KV cache goes with it
            else:
                batch.generator.remove([uid])
            self.stats.cancelled += 1
            batch.finish(batch.running[uid], "cancelled", uid=uid)
