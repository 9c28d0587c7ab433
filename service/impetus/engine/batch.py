"""The requests in mlx-lm's batch: how each enters it, steps, pauses and leaves.

`Batch` owns mlx-lm's `BatchGenerator`, the `running` requests (by uid) and
the `paused` ones with their KV caches, and the prefix cache they start from
and end in (`Prefixes`). It inserts a request from the longest cached prefix
of its prompt (computing a short one's first token itself, `first_token_now`),
keeps its cache at its prompt's points as the prefill reaches them,
runs a step, turns each token into its client's text (`tokens.emit`) and
ends each request exactly once (`finish`). Who gets a slot, who is paused
and who speculates are decided elsewhere (`admission`, `speculator`): this
room only carries those decisions out.
"""

from __future__ import annotations

import logging
import time
import traceback

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

from impetus.engine import media
from impetus.engine.kv_memory import KVLedger, KVMemory, KVSize
from impetus.engine.kv_quant import quantized_cache
from impetus.engine.prefixes import Prefixes
from impetus.engine.request import FinishEvent, RequestHandle
from impetus.engine.running import EngineStats, Running, Token
from impetus.engine.sampling import make_processors, make_sampler
from impetus.engine.scheduler import Scheduler
from impetus.engine.structured import GrammarProcessor
from impetus.engine.tokens import emit, make_detokenizer_factory
from impetus.system import wired

log = logging.getLogger("impetus.engine")


class Batch:
    def __init__(self, loaded, settings, queue: Scheduler, stats: EngineStats, ledger: KVLedger | None = None):
        self.name = loaded.name
        self.model = loaded.model
        self.vision = loaded.vision  # a vision-language model's image side (models.vision), or None
        self.tokenizer = loaded.tokenizer
        self._new_detokenizer = make_detokenizer_factory(loaded.tokenizer)
        self._settings = settings
        self._queue = queue
        self.stats = stats
        self.prefill_step = settings.prefill_step_size or (512 if mx.default_device() == mx.gpu else 128)
        self.headroom = max(1, settings.max_batch_size // 8)
        self.running: dict[int, Running] = {}
        self.paused: dict[RequestHandle, Running] = {}
        bits, group = settings.kv_bits, settings.kv_group_size
        self.kv_bits = bits
        # A new request's KV cache: float, or its full-attention layers in `kv_bits` (engine.kv_quant).
        # (Over the model, not `self`: the prefix cache holds it, and a cycle would keep the
        # weights after an unload until Python's collector ran.)
        model = self.model
        self.new_cache = ((lambda: quantized_cache(model, bits, group)) if bits
                          else (lambda: make_prompt_cache(model)))
        self.prefixes = Prefixes(loaded, settings, stats, self.new_cache)
        # The bytes each request's KV cache will need, against the worker's ledger (engine.kv_memory).
        size = KVSize.measure(self.model, self.new_cache, self.prefill_step)
        prefixes = self.prefixes
        self.kv = KVMemory(self.name, size, ledger or KVLedger(), stats, cached=lambda: prefixes.nbytes,
                           shrink=prefixes.shrink, output_reserve=settings.kv_output_reserve_tokens)
        self.generator: BatchGenerator | None = None
        self._lone_uid = 0  # negative uids: requests in `running` that are not the generator's
        self.done = 0  # requests ended (written by the engine thread only)
        self.last_done_at = time.monotonic()  # when a request last ended (the host's idle release)

    def new_generator(self) -> BatchGenerator:
        eos = [[t] for t in sorted(self.tokenizer.eos_token_ids)]
        generator = BatchGenerator(
            self.model,
            stop_tokens=eos,
            # The engine decides who runs; mlx-lm must not hold a newcomer back
            # because the batch is "full" (it stops prefilling at this size).
            completion_batch_size=self._settings.max_batch_size + self.headroom,
            prefill_batch_size=self._settings.prefill_batch_size,
            prefill_step_size=self.prefill_step,
        )
        wired.disown(generator)  # the worker holds the wired limit, not one generator's lifetime
        return generator

    def next_uid(self) -> int:
        """A uid for a request in `running` that is not in the generator."""
        self._lone_uid -= 1
        return self._lone_uid

    def uid_of(self, handle: RequestHandle) -> int | None:
        """The uid of a request in the batch (None: not in it)."""
        return next((uid for uid, state in self.running.items() if state.handle is handle), None)

    # -- in ------------------------------------------------------------------

    def insert(self, handle: RequestHandle, now: bool = False) -> None:
        """Into the batch from the longest cached prefix; `now`: a short
        prompt is computed here and its first token sent at once
        (`first_token_now`)."""
        prompt = handle.prompt_tokens
        params = handle.params
        cache, rest = self.prefixes.fetch(handle.cache_key)
        cached = len(prompt) - len(rest)
        rest = prompt[cached:]  # the key has its images' ids where the prompt has placeholders
        sampler, processors = make_sampler(params), make_processors(params, self.tokenizer)
        stops = [s for s in params.stop if s]
        state = Running(
            handle=handle,
            detokenizer=self._new_detokenizer(),
            stops=stops,
            holdback=max((len(s) for s in stops), default=1) - 1,
            prompt_tokens=len(prompt),
            cached_tokens=cached,
            sampler=sampler,
            processors=processors,
            in_cache=cached,
            points={p for p in params.keep_prefixes if cached < p < len(prompt)},
        )
        self.stats.prompt_tokens += len(prompt)
        self.stats.cached_prompt_tokens += cached
        self.stats.prefilled_tokens += len(rest)
        self._queue.charge(handle.tenant, len(rest))
        if handle.media is not None and cached < handle.media.end:  # images not in the cache: through them here
            cache = cache if cache is not None else self.new_cache()
            with mx.stream(self.generator.stream):
                media.prefill(self.model, self.vision, prompt, handle.media, cache, cached, self.prefill_step,
                              state.points, lambda n, copy: self.prefixes.keep(handle.key_of(prompt[:n]), copy,
                                                                               point=True))
            cached, rest = handle.media.end, prompt[handle.media.end:]
            state.in_cache = cached
            state.points = {p for p in state.points if p > cached}
            self.stats.image_prefills += 1
        if now and len(rest) <= self.prefill_step:
            self.first_token_now(state, cache, rest)
            return
        # The prompt in segments that end at its points: mlx-lm stops its
        # prefill chunks there, and `keep_points` keeps the cache of each.
        ends = sorted(p - cached for p in state.points) + [len(rest)]
        (uid,) = self.generator.insert_segments(
            [[rest[start:end] for start, end in zip([0] + ends, ends)]],
            max_tokens=[params.max_tokens],
            caches=[cache if cache is not None else self.new_cache()],
            all_tokens=[prompt[:cached]],
            samplers=[sampler],
            logits_processors=[processors],
        )
        self.running[uid] = state

    def first_token_now(self, state: Running, cache, rest: list[int]) -> None:
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
            cache = self.new_cache()
        with mx.stream(self.generator.stream):
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
            (uid,) = self.generator.insert(
                [[token]],
                max_tokens=[handle.params.max_tokens - 1],
                caches=[cache],
                all_tokens=[list(prompt)],
                samplers=[state.sampler],
                logits_processors=[state.processors],
            )
        else:  # done at its first token: it never joins the batch
            uid = self.next_uid()
        self.running[uid] = state
        self.on_token(Token(uid, token, logprobs[0], finish, cache if finish else None,
                            list(prompt) if finish else None), state)
        state.joining = finish is None

    # -- pausing (preemption) ------------------------------------------------

    def pause(self, handle: RequestHandle) -> None:
        """Take a decoding request out of the batch, keeping its KV cache; it
        goes back to the front of its key's queue and resumes where it was."""
        uid = self.uid_of(handle)
        state = self.running[uid]
        cache, tokens = self.generator.remove([uid], return_prompt_caches=True)[uid]
        mx.eval([c.state for c in cache])
        del self.running[uid]
        state.paused = (cache, list(tokens))
        self.paused[handle] = state
        self._queue.stopped(handle)
        self._queue.add(handle, front=True)
        self.stats.preempted += 1

    def resume(self, state: Running) -> None:
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
        (uid,) = self.generator.insert(
            [tokens[-1:]],
            max_tokens=[state.handle.params.max_tokens - state.generated],
            caches=[cache],
            all_tokens=[tokens[:-1]],
            samplers=[state.sampler],
            logits_processors=[state.processors],
        )
        self.running[uid] = state
        state.joining = True

    # -- a step and its tokens -----------------------------------------------

    def step(self) -> None:
        try:
            prompt_responses, responses = self.generator.next()
        except Exception:
            # Fail the batch, not the process: start over with a fresh generator.
            message = traceback.format_exc(limit=3)
            log.exception("engine step failed for %s; failing its %d running requests",
                          self.name, len(self.running))
            self.stats.errors += 1
            for uid, state in list(self.running.items()):
                self.finish(state, "error", uid=uid, error=message)
            self.generator = self.new_generator()
            return
        self.stats.steps += 1
        ended = []
        for progress in prompt_responses:
            state = self.running.get(progress.uid)
            if state is not None:
                state.in_cache = state.cached_tokens + progress.progress[0]
                if progress.end_of_segment and state.in_cache in state.points:
                    ended.append(progress.uid)
        if ended:
            self.keep_points(ended)
        for response in responses:
            state = self.running.get(response.uid)
            if state is None:  # removed (cancelled) while this step ran
                continue
            self.on_token(response, state)

    def keep_points(self, uids: list[int]) -> None:
        """The caches of prompts whose prefill has just reached one of their
        points, into the prefix cache (and its disk tier)."""
        for uid, (cache, tokens) in self.generator.extract_cache(uids).items():
            state = self.running[uid]
            prompt = state.handle.prompt_tokens[:state.in_cache]
            if list(tokens) == prompt:
                self.prefixes.keep(state.handle.key_of(prompt), cache, point=True)
                self.stats.prefix_points += 1

    def on_token(self, response, state: Running, cache_of=None) -> None:
        """Count and send one token; at the end, its KV cache into the prefix
        cache. `cache_of()`: where a request decoded off mlx-lm's batch keeps
        its cache, should a stop string end it (the speculator's row)."""
        state.generated += 1
        state.joining = False
        state.in_cache = state.prompt_tokens + state.generated
        self.kv.grow(state.handle, state.in_cache)
        self.stats.generated_tokens += 1
        self._queue.charge(state.handle.tenant, 1)
        finish = emit(response, state)
        if finish is None:
            return
        if response.finish_reason is not None:
            cache, tokens = response.prompt_cache, response.all_tokens
        elif cache_of is not None:
            cache, tokens = cache_of()  # a stop string, decoding off the batch
        else:  # a stop string: still in the batch
            caches = self.generator.remove([response.uid], return_prompt_caches=True)
            cache, tokens = caches.get(response.uid, (None, None))
        if cache is not None:
            self.prefixes.keep(state.handle.key_of(tokens), cache)
        self.finish(state, finish, uid=response.uid)

    # -- out -----------------------------------------------------------------

    def finish(self, state: Running, reason: str, uid: int | None = None, error: str | None = None):
        if uid is not None and self.running.pop(uid, None) is not None:
            self._queue.stopped(state.handle)
        if reason in ("stop", "length"):
            self.stats.finished += 1
        self.push_finish(
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

    def fail_waiting(self, handle: RequestHandle, message: str) -> None:
        self.stats.errors += 1
        self.push_finish(handle, FinishEvent("error", prompt_tokens=len(handle.prompt_tokens), error=message))

    def push_finish(self, handle: RequestHandle, event: FinishEvent) -> None:
        """Every request ends here exactly once."""
        self.last_done_at = time.monotonic()
        self.done += 1
        self.kv.release(handle)
        handle.push(event)
