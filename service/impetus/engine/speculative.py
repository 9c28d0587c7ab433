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
halved after one fully rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_NGRAM = 3


@dataclass
class NgramIndex:
    tokens: list[int] = field(default_factory=list)
    # n -> {n-gram: the index just past its latest occurrence that is not the sequence's own suffix}
    _last: dict = field(default_factory=lambda: {n: {} for n in range(1, MAX_NGRAM + 1)})

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
        the sequence's last tokens; [] when there is none."""
        if k <= 0:
            return []
        for n in range(min(MAX_NGRAM, len(self.tokens)), 0, -1):
            start = self._last[n].get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start:start + k]
        return []


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
