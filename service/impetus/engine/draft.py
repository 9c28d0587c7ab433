"""Guesses from a draft model: a small model with the target's tokenizer
proposes the next K tokens of every speculating sequence, one batched pass
per token, and the target checks them all in one pass (`Engine._spec_step`).

`IMPETUS_SPECULATIVE=draft` with `IMPETUS_DRAFT_MODEL=<model>`. Prompt lookup
guesses well only where the answer repeats its input; a draft model guesses
anywhere, at the cost of running it: K passes of the draft per step, plus
its own prefill of each prompt. It pays where the draft is much smaller
than the target (SmolLM2-135M in front of a 1.7B, a 1B in front of a 70B on
a Mac). Guesses are the draft's argmax, one known token per position, so the
same acceptance rules hold: greedy output is the target's own, and sampled
output keeps the target's distribution (`sampled_verdict`).

The draft's KV cache rows follow the target's: `settle` keeps the guesses
the target accepted and drops the rest (`SpecBatchCache.rewind`); tokens
known but not yet in the draft's cache (the target's own token, and a last
guess the draft never had to read) are `pending`, fed at the next step.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from impetus.engine.spec_cache import SpecBatchCache

PREFILL_CHUNK = 512


class DraftModel:
    def __init__(self, model):
        self.model = model
        self.cache: SpecBatchCache | None = None
        self.pending: list[list[int]] = []  # per row: known tokens not in the draft's cache, the last one last
        self.guessed = 0  # guesses of the latest step that are in the cache

    def start(self, rows: list[tuple[list[int], list | None]]) -> None:
        """`rows`: each sequence's tokens (prompt and output, its last sent
        token last) and the draft cache it left with last time (or None)."""
        caches = []
        self.pending = []
        for tokens, saved in rows:
            cache = saved if saved is not None else make_prompt_cache(self.model)
            have = cache[0].offset
            rest = tokens[have:-1]
            for start in range(0, len(rest), PREFILL_CHUNK):
                self.model(mx.array([rest[start:start + PREFILL_CHUNK]]), cache=cache)
                mx.eval([c.state for c in cache])
            caches.append(cache)
            self.pending.append(tokens[-1:])
        self.cache = SpecBatchCache.merge(caches)
        self.guessed = 0

    def propose(self, wanted: list[int]) -> list[list[int]]:
        """Up to wanted[i] guesses for row i (all rows are fed either way)."""
        k = max(wanted)
        self.guessed = 0
        if k == 0:
            return [[] for _ in wanted]
        width = max(len(p) for p in self.pending)
        inputs = mx.array([p + [0] * (width - len(p)) for p in self.pending])
        logits = self.model(inputs, cache=self.cache.layers)
        ends = mx.array([len(p) - 1 for p in self.pending])
        token = mx.argmax(mx.take_along_axis(logits, ends[:, None, None], axis=1)[:, 0], axis=-1)
        self.cache.keep([len(p) for p in self.pending], width)
        self.pending = [[] for _ in wanted]
        guesses = [token]
        for _ in range(k - 1):
            logits = self.model(guesses[-1][:, None], cache=self.cache.layers)
            guesses.append(mx.argmax(logits[:, -1], axis=-1))
            self.cache.keep([1] * len(wanted), 1)
        mx.eval(guesses)
        self.guessed = k - 1
        columns = mx.stack(guesses, axis=1).tolist()
        return [row[:n] for row, n in zip(columns, wanted)]

    def settle(self, news: list[list[int]], accepted: list[int]) -> None:
        """After the target's check: row i took accepted[i] guesses, then
        its own token (news[i] = those guesses and that token)."""
        kept = [min(a, self.guessed) for a in accepted]
        if self.guessed:
            self.cache.rewind([self.guessed - n for n in kept])
        for row, new in enumerate(news):
            self.pending[row] += new[kept[row]:]
        self.guessed = 0

    def extract(self, row: int) -> list:
        return self.cache.extract(row)

    def remove(self, rows: list[int]) -> None:
        self.cache.remove(rows)
        self.pending = [p for i, p in enumerate(self.pending) if i not in set(rows)]
