"""What a caller hands the engine, and what comes back."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

# Priorities, lower first (vLLM's convention). A key's priority is the best a
# request of that key may ask for.
INTERACTIVE = 0
BATCH = 1
PRIORITY_NAMES = {"interactive": INTERACTIVE, "batch": BATCH}


@dataclass(frozen=True)
class Tenant:
    """Who a request is for, as the scheduler sees it: a key, or a client
    address when keys are off. `share` weighs its part of the machine."""

    id: str
    name: str
    share: float = 1.0
    priority: int = INTERACTIVE


ANONYMOUS = Tenant("-", "-")


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per position, as OpenAI counts them
    # An llguidance grammar the output must match (response_format, required tool calls).
    grammar: str | None = None
    # Tokens the answer is expected to repeat (OpenAI's `prediction`): more to guess from.
    prediction: list[int] = field(default_factory=list)
    # Prompt lengths whose KV cache is kept in the prefix cache as the prompt
    # is computed: where other prompts are likely to part from this one
    # (api.prompt.prefix_points).
    keep_prefixes: list[int] = field(default_factory=list)


@dataclass
class TokenEvent:
    """One generated token. `text` is the new text it makes visible, which may
    be empty (an incomplete UTF-8 sequence, or text held back because it could
    be the start of a stop string) or span earlier tokens' held-back text."""

    token: int
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class FinishEvent:
    reason: str  # "stop" | "length" | "cancelled" | "error"
    text: str = ""  # held-back text released at the end
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    stop_string: str | None = None  # the stop string that ended it (Anthropic's stop_sequence)
    # Speculative decoding: guessed tokens the model accepted / rejected
    # (OpenAI's completion_tokens_details.accepted/rejected_prediction_tokens).
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class RequestHandle:
    """The caller's side of one generation.

    The engine thread appends events to `outbox` (deque appends are atomic) and
    calls `waiter.notify()`; the caller drains the outbox in its own thread or
    greenlet. `waiter` must offer notify() (safe from any thread) and wait(timeout).
    """

    def __init__(self, prompt_tokens: list[int], params: SamplingParams, waiter, on_cancel,
                 tenant: Tenant = ANONYMOUS, priority: int | None = None, media=None,
                 cache_key: list[int] | None = None):
        self.prompt_tokens = prompt_tokens
        # A prompt's images (engine.media.Media), and the prompt as the prefix
        # cache knows it: its images' placeholders told apart by content.
        self.media = media
        self.cache_key = prompt_tokens if cache_key is None else cache_key
        self.params = params
        self.waiter = waiter
        self.outbox: deque = deque()
        self.cancelled = False
        self._on_cancel = on_cancel
        self.tenant = tenant
        # A request may ask for a later priority than its key's, never an earlier one.
        self.priority = tenant.priority if priority is None else max(tenant.priority, priority)
        self.submitted_at = time.monotonic()
        # Written by the engine thread, read by the caller.
        self.admitted_at: float | None = None  # when it first got a batch slot
        self.queue_position = 0  # 1-based while waiting, 0 once admitted
        self.waited_for_memory = False  # it waited for KV room (engine.kv_memory)
        self.arrival = 0  # the scheduler's arrival order
        self.queued_step = self.admitted_step = -1  # engine steps: when queued, when admitted

    def key_of(self, tokens: list[int]) -> list[int]:
        """`tokens` (this prompt and what followed it) as the prefix cache knows them."""
        if self.cache_key is self.prompt_tokens:
            return tokens
        return self.cache_key[:len(tokens)] + list(tokens[len(self.cache_key):])

    @property
    def queue_seconds(self) -> float:
        """How long it waited for a batch slot (so far, while it still waits)."""
        end = self.admitted_at if self.admitted_at is not None else time.monotonic()
        return end - self.submitted_at

    def push(self, event) -> None:
        self.outbox.append(event)
        self.waiter.notify()

    def cancel(self) -> None:
        """Stop generating (client went away). Safe to call more than once."""
        if not self.cancelled:
            self.cancelled = True
            self._on_cancel(self)

    def events(self, timeout: float | None = None):
        """Yield events until the FinishEvent (inclusive)."""
        while True:
            while self.outbox:
                event = self.outbox.popleft()
                yield event
                if isinstance(event, FinishEvent):
                    return
            if not self.waiter.wait(timeout):
                raise TimeoutError("no output from the engine")
