"""What a caller hands the engine, and what comes back."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


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


class RequestHandle:
    """The caller's side of one generation.

    The engine thread appends events to `outbox` (deque appends are atomic) and
    calls `waiter.notify()`; the caller drains the outbox in its own thread or
    greenlet. `waiter` must offer notify() (safe from any thread) and wait(timeout).
    """

    def __init__(self, prompt_tokens: list[int], params: SamplingParams, waiter, on_cancel):
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.waiter = waiter
        self.outbox: deque = deque()
        self.cancelled = False
        self._on_cancel = on_cancel

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
