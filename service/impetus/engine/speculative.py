"""Prompt lookup: drafts for speculative decoding, taken from the sequence itself.

Much of what a team asks a coding model repeats its input: a file given back
with one change, a function fixed, JSON returned with a field added. When the
last few tokens of a sequence (3, else 2, else 1) occurred before in its
prompt or output, the tokens that followed them then are a good guess for
what follows now (llama.cpp's n-gram speculation, vLLM's `ngram` method).
The model checks all the guesses in one forward pass: on a CPU or a Mac,
decoding is bound by reading the weights, so 1 + K positions cost little
more than one. The engine keeps the guesses the model agrees with, plus the
model's own next token: greedy output is exactly what it would have been.

`NgramIndex` keeps, for n = 1..3, where each n-gram last ended, updated as
tokens are added: a proposal is three dict lookups, whatever the length.
`DraftLength` adapts K per sequence: doubled after a draft fully accepted,
halved after one fully rejected. A sequence with nothing to copy (four steps
in a row with no guess accepted) goes back to the batch for BACKOFF_TOKENS:
there mlx-lm overlaps the next step's compute with this one's bookkeeping,
which a step with guesses cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_NGRAM = 3
MISSES_BEFORE_BACKOFF = 4
BACKOFF_TOKENS = 48


@dataclass
class NgramIndex:
    tokens: list[int] = field(default_factory=list)
    # n -> {n-gram: the index just past its latest occurrence that is not the sequence's own suffix}
    _last: dict = field(default_factory=lambda: {n: {} for n in range(1, MAX_NGRAM + 1)})
    following: int | None = None  # where the passage being copied goes on
    source: int | None = None  # where the latest draft was taken from

    def extend(self, new: list[int]) -> None:
        for token in new:
            # The suffix before this token becomes an earlier occurrence now.
            end = len(self.tokens)
            for n in range(1, MAX_NGRAM + 1):
                if end >= n:
                    self._last[n][tuple(self.tokens[end - n:end])] = end
            self.tokens.append(token)

    def propose(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the longest earlier occurrence of
        the sequence's last tokens; [] when there is none. While the
        sequence is copying a passage (its last tokens were that passage's
        continuation), the passage goes on: the latest occurrence of a short
        n-gram (an indentation, a comma) is often elsewhere."""
        if k <= 0:
            return []
        if self.following is not None:
            return self.tokens[self.following:self.following + k]
        for n in range(min(MAX_NGRAM, len(self.tokens)), 0, -1):
            start = self._last[n].get(tuple(self.tokens[-n:]))
            if start is not None:
                self.source = start
                return self.tokens[start:start + k]
        return []

    def accept(self, new: list[int]) -> None:
        """Add the tokens a step produced; follow the passage the draft came
        from if they all continued it."""
        start = self.following if self.following is not None else self.source
        self.extend(new)
        end = None if start is None else start + len(new)
        self.following = end if end is not None and self.tokens[start:end] == new and end < len(self.tokens) else None
        self.source = None


@dataclass
class DraftLength:
    """K for the next draft of one sequence."""

    maximum: int
    current: int = 4

    def __post_init__(self):
        self.current = max(1, min(self.current, self.maximum))

    def update(self, proposed: int, accepted: int) -> None:
        if proposed and accepted == proposed:
            self.current = min(self.maximum, self.current * 2)
        elif proposed and accepted == 0:
            self.current = max(1, self.current // 2)
