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
A sampling request keeps a guess with the probability its own distribution
gives it, and on a refusal draws from that distribution without the guess
(`sampled_verdict`, the speculative sampling rule for a draft that is one
known token per position): its output has the same distribution as without
guesses.

`NgramIndex` keeps, for n = 1..3, where each n-gram last ended, updated as
tokens are added: a proposal is three dict lookups, whatever the length.
`DraftLength` adapts K per sequence: doubled after a draft fully accepted,
halved after one fully rejected. `Payoff` pauses the guesses of a sequence
with little to copy. Guesses are not free on this CPU: a forward pass over
1 + 4 positions of one sequence costs 1.7x one position, 1 + 8 costs 2.1x
(the 49,152-row output layer alone is 28 M multiply-adds a position); 4
sequences x 5 positions cost 1.23x 4 x 1. So a sequence must take about one
guess a step to gain. Stories took 0.2 to 0.8 (0.89x at 4 streams before
`Payoff`); a file being copied takes 4 to 7. A paused sequence still fills
the padding of a pass that another sequence widens (free guesses), and a
good run of those ends its pause.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx

MAX_NGRAM = 3
# Payoff: guesses accepted per step, averaged with this weight on the latest
# step; below MIN_ACCEPTED (and under MOSTLY of all its guesses taken, after
# MIN_EVIDENCE of them) a sequence stops guessing for BACKOFF_TOKENS, twice
# as long each time it comes back to no better (at most MAX_BACKOFF_TOKENS).
PAYOFF_WEIGHT = 0.3
MIN_ACCEPTED = 1.0
BACKOFF_TOKENS = 16
MAX_BACKOFF_TOKENS = 256
MIN_EVIDENCE = 8  # guesses proposed before the first pause
MOSTLY = 0.6  # a sequence that took this share of its guesses so far never pauses
# A pause this long sends the sequences back to mlx-lm's batch, where a step
# overlaps the next one's compute (a return costs about 3 steps' work).
LONG_PAUSE_TOKENS = 32


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



@dataclass
class Payoff:
    """Whether guessing pays for one sequence: it pauses when its recent
    steps took few guesses and it has taken under 60 % of all its
    guesses (a file being copied has moments where it departs from the
    file; a story is one long such moment)."""

    accepted: float = 1.0  # guesses accepted per step, a moving average (optimistic at first)
    backoff: int = BACKOFF_TOKENS  # the next pause
    proposed_total: int = 0
    accepted_total: int = 0

    def update(self, proposed: int, accepted: int) -> int:
        """After a step: how many tokens to decode without guesses now (0: go on)."""
        if not proposed:
            return 0
        self.proposed_total += proposed
        self.accepted_total += accepted
        self.accepted += PAYOFF_WEIGHT * (accepted - self.accepted)
        if self.accepted >= 2 * MIN_ACCEPTED:
            self.backoff = BACKOFF_TOKENS
        if self.accepted >= MIN_ACCEPTED or self.accepted_total >= MOSTLY * self.proposed_total:
            return 0
        if self.proposed_total < MIN_EVIDENCE:  # an answer's first words are rarely in the prompt
            return 0
        pause, self.backoff = self.backoff, min(2 * self.backoff, MAX_BACKOFF_TOKENS)
        self.accepted = 1.0  # a fresh chance after the pause
        return pause


def sampled_verdict(distribution: mx.array, draft: list[int]) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023) where
    the draft is certain (q puts all its mass on the guess): guess j is kept
    with probability p_j(guess), and at the first one refused the token is
    drawn from p_j without the guess, renormalized (max(0, p - q)); after K
    kept guesses, one more from p_K. `distribution`: [K + 1, vocabulary]
    normalized log-probabilities. Returns (guesses kept, the token after them)."""
    k = len(draft)
    if k == 0:
        token = mx.random.categorical(distribution[:1])
        mx.eval(token)
        return 0, int(token.item())
    guesses = mx.array(draft)[:, None]
    kept_with = mx.exp(mx.take_along_axis(distribution[:k], guesses, axis=1))[:, 0]
    coins = mx.random.uniform(shape=(k,))
    vocabulary = mx.arange(distribution.shape[-1])[None, :]
    # A guess that held all the mass is never refused, so its empty residual is never drawn from.
    without = mx.where(vocabulary == guesses, -mx.inf, distribution[:k])
    draws = mx.random.categorical(mx.concatenate([without, distribution[k:k + 1]], axis=0))
    mx.eval(kept_with, coins, draws)
    kept_with, coins, draws = kept_with.tolist(), coins.tolist(), draws.tolist()
    for position in range(k):
        if coins[position] >= kept_with[position]:
            return position, draws[position]
    return k, draws[k]
