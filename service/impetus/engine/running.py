"""What the engine thread knows of each request while it runs, and its counters.

`Running` is one request inside the batch (mlx-lm's, or the speculator's
rows): its detokenizer, stop strings, sampler, how much of its prompt is in
its KV cache, and its speculation history. `EngineStats` are the engine's
counters, read by `/v1/status` and the metrics. Plain data: nothing here
computes with the model or touches the scheduler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from impetus.engine.request import RequestHandle
from impetus.engine.speculative import NgramIndex, Payoff
from impetus.engine.structured import GrammarProcessor


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
    prefix_points: int = 0  # prompts' caches kept at their points (api.prompt.prefix_points)
    prefix_hits_ram: int = 0  # requests started from a prefix in RAM ...
    disk_hits: int = 0  # ... and from the disk tier (engine.prefix_disk)
    disk_bytes_read: int = 0
    disk_bytes_written: int = 0
    disk_writes: int = 0
    disk_skipped: int = 0  # files that did not load (damaged, another model's), removed
    disk_evicted: int = 0  # files removed to keep the disk budget
    kv_bytes: int = 0  # KV bytes the requests holding a cache may grow to (engine.kv_memory)
    kv_bytes_peak: int = 0
    kv_waits: int = 0  # requests that waited in the queue for KV room
    first_tokens_now: int = 0  # first tokens computed before joining the batch (Batch.first_token_now)
    image_prefills: int = 0  # prompts whose images were computed (engine.media), not found in the prefix cache
    spec_steps: int = 0  # forward passes decoded off mlx-lm's batch with guesses (Speculator.step)
    spec_proposed: int = 0  # draft tokens proposed by prompt lookup
    spec_accepted: int = 0  # ... and accepted by the model
    started_at: float = field(default_factory=time.time)


@dataclass
class Running:
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
    # Back in mlx-lm's batch (resumed, from the speculator, after its first
    # token) but not stepped there yet: its cache lacks the last token sent,
    # which waits in the generator's queue, so it cannot be paused yet.
    joining: bool = False
    common: dict = field(default_factory=dict)  # waiting handle -> common prefix length
    points: set = field(default_factory=set)  # prompt lengths whose cache is kept as the prefill passes them
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
        """Decoding in mlx-lm's batch (prefill done, a token out, stepped
        there since it joined) and not paused."""
        return self.generated >= 1 and self.paused is None and not self.joining

    @property
    def has_grammar(self) -> bool:
        return any(isinstance(processor, GrammarProcessor) for processor in self.processors)


@dataclass
class Token:
    """A token computed by the engine itself (a first token, a speculative
    step's), shaped as the generator's responses."""

    uid: int
    token: int
    logprobs: object
    finish_reason: str | None
    prompt_cache: list | None
    all_tokens: list | None
