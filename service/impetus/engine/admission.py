"""Who joins the batch this step: free slots, spare slots, pauses, prefill slots.

Each step `Admission.admit` walks the waiting requests in the scheduler's
order and gives them slots: free ones first, then `max_batch_size / 8`
spare ones, then a running request the scheduler names is paused; at most
`prefill_batch_size` admitted with prompt left to compute; a request that
shares a long prefix with one being computed waits for it
(`InFlightPrefixes`). It decides; the batch (`impetus.engine.batch`)
inserts, pauses and resumes. It does not order the keys (the scheduler
does) nor touch the model.
"""

from __future__ import annotations

import logging
import time

from impetus.engine.batch import Batch
from impetus.engine.request import RequestHandle
from impetus.engine.scheduler import Scheduler
from impetus.engine.sharing import InFlightPrefixes

log = logging.getLogger("impetus.engine")


class Admission:
    def __init__(self, batch: Batch, queue: Scheduler, settings):
        self._batch = batch
        self._queue = queue
        self._max_batch = settings.max_batch_size
        self._prefill_batch = settings.prefill_batch_size
        self.sharing = InFlightPrefixes(batch, settings.share_prefix_in_flight)
        self.stalled = False  # the first in line waits for KV room and nothing of this engine runs

    def admit(self) -> None:
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

        The newcomers are then inserted shortest prompt first: mlx-lm
        prefills up to `prefill_batch_size` prompts together, a chunk of each
        per step padded to the longest chunk, so short prompts queued behind
        long ones pay for the long ones' padding. Measured on a 2-core CPU,
        16 streams of mixed prompts (a line, ~250 and ~900 tokens), 128-token
        steps: TTFT p50 13.0 s in arrival order, 6.9 s shortest first."""
        self.stalled = False
        if not self._queue:
            return
        order = self._queue.order()
        admitted, alone, memory_short = self._choose(order)
        self._number(order, admitted)
        self._start(admitted, alone)
        self.stalled = memory_short and not self._batch.running

    def _choose(self, order: list[RequestHandle]) -> tuple[list[RequestHandle], set, bool]:
        """The requests that get a slot now, pausing others to make room;
        `alone`: those whose first token is computed before they join; and
        whether one waits for KV room."""
        batch, queue = self._batch, self._queue
        free = self._max_batch - len(batch.running)
        prefilling = sum(1 for state in batch.running.values() if state.prefilling)
        admitted, alone, memory_short = [], set(), False
        for handle in order:
            resuming = handle in batch.paused
            # Its key's only request, beside others' work: its first token is computed here
            # (one a round), so it needs no prefill slot of the generator.
            lone = not alone and not resuming and not queue.running[handle.tenant.id] and bool(batch.running)
            if not resuming and not lone and prefilling >= self._prefill_batch:
                continue  # only resumes (no prompt to compute) until a prefill slot frees
            if not resuming and (memory_short or not batch.kv.fits(handle)):
                # It waits for KV room; newcomers after it wait too (a long context is not
                # overtaken for ever by short ones); paused requests hold theirs and resume.
                if not memory_short:
                    self._wait_for_memory(handle)
                memory_short = True
                continue
            if free <= 0:
                pausable = [state.handle for state in batch.running.values() if state.can_pause]
                victim = queue.victim(handle, pausable)
                if victim is None:
                    break
                if self.sharing.wait(handle, admitted):
                    continue
                if free <= -batch.headroom:  # the spare slots are taken too: pause one
                    batch.pause(victim)
                    free += 1
            elif self.sharing.wait(handle, admitted):
                continue
            if lone:
                alone.add(handle)
            if not resuming:
                batch.kv.take(handle)
            queue.remove(handle)
            queue.started(handle)  # counts for the next decisions of this round
            admitted.append(handle)
            free -= 1
            prefilling += not resuming and not lone
        return admitted, alone, memory_short

    def _wait_for_memory(self, handle: RequestHandle) -> None:
        """No room for its KV cache: it waits (its queue notes say so) until a
        running request ends and gives its bytes back."""
        if not handle.waited_for_memory:
            handle.waited_for_memory = True
            self._batch.stats.kv_waits += 1
            log.info("a request on %s waits for KV room (%d tokens; %d MiB held)", self._batch.name,
                     self._batch.kv.tokens(handle), self._batch.stats.kv_bytes // 2**20)

    @staticmethod
    def _number(order: list[RequestHandle], admitted: list[RequestHandle]) -> None:
        """Each handle's place in the queue, for the client's progress."""
        position, taken = 0, set(admitted)
        for handle in order:
            if handle in taken:
                handle.queue_position = 0
            else:
                position += 1
                handle.queue_position = position

    def _start(self, admitted: list[RequestHandle], alone: set) -> None:
        batch, now = self._batch, time.monotonic()
        for handle in sorted(admitted, key=lambda h: len(h.prompt_tokens)):
            if handle.admitted_at is None:
                handle.admitted_at, handle.admitted_step = now, batch.stats.steps
            try:
                state = batch.paused.pop(handle, None)
                batch.resume(state) if state is not None else batch.insert(handle, handle in alone)
            except Exception as error:  # a bad request must not stop the engine
                log.exception("could not start a generation on %s", batch.name)
                self._queue.stopped(handle)
                batch.fail_waiting(handle, f"could not start generation: {error}")
