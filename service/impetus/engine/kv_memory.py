"""The KV cache's bytes: what a request will need, and whether the worker has them.

A worker's memory budget (IMPETUS_MEMORY_BUDGET_FRACTION of the machine,
split between workers) holds its models' weights, their prefix caches in
RAM and the KV caches of the requests they run. The weights are counted at
load (`EngineHost`); this room counts the rest, so that admission asks
before a request joins the batch: is there room for its context's keys and
values at the model's KV precision? If not, the request waits in the queue,
with the queue notes clients already get, until a running one ends, instead
of the machine swapping (on a Mac, unified memory: the whole system slows)
or a request failing.

`KVSize` is measured on the model's own cache: one token through the model,
and the bytes a token takes in each layer's buffers (float, 8 or 4 bits;
buffers grow 256 tokens at a time; a sliding-window layer holds at most its
window and a prefill chunk). SmolLM2-135M in float32 holds 46,080 bytes a
token (30 layers x 3 heads x 64 x 2 x 4), 12,960 in 8 bits; Gemma 3 270M
6,144 in its 3 full-attention layers plus 30,720 in its 15 sliding ones up
to 640 tokens; a 30B model in bfloat16 about 100 KB: 5 GB for one agent's
50k-token context.

mlx-lm's batch holds its rows' caches as one array padded to the longest
row, so an engine's need is `rows x longest`, each row counted at its prompt
plus its answer up to IMPETUS_KV_OUTPUT_RESERVE_TOKENS (Claude Code asks for
32,000 and answers in hundreds; past the reserve, a row claims more as it
grows). `KVLedger` is the worker's account, shared by its engines; an
engine's claim is replaced whole at each admission and as requests end. It
decides nothing about order (the scheduler does) and computes nothing with
the model beyond its probe.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten

from impetus.engine.waiters import native_lock


def _layer(layer) -> tuple[int, int]:
    """(bytes a token adds, bytes that do not grow) of one layer's cache
    after a token: keys and values (float, or MLX's quantized triples) are
    buffers with the tokens on their next-to-last axis."""
    if getattr(layer, "keys", None) is None:
        return 0, layer.nbytes  # a recurrent state (no keys): its size is fixed
    arrays = [a for _, a in tree_flatten((layer.keys, layer.values))]
    return sum(a.nbytes for a in arrays) // arrays[0].shape[-2], 0


class KVSize:
    """Bytes of a cache that holds `tokens` tokens, layer by layer."""

    def __init__(self, per_token: int, windows: list[tuple[int, int]], fixed: int, step: int = 256):
        self.step = step  # mlx-lm's caches grow their buffers this many tokens at a time
        self.per_token = per_token  # over the layers that keep every token
        self.windows = windows  # (bytes a token, window) of sliding-window layers
        self.fixed = fixed  # bytes that do not grow with the context (recurrent state)

    @classmethod
    def measure(cls, model, new_cache, chunk: int = 0) -> KVSize:
        """Run one token into a fresh cache and read each layer's buffers.
        A sliding-window layer holds its window and one prefill `chunk`
        (mlx-lm keeps a chunk's tokens whole while it attends to them)."""
        cache = new_cache()
        model(mx.array([[0]]), cache=cache)
        mx.eval([layer.state for layer in cache])
        per_token, windows, fixed = 0, [], 0
        for layer in cache:
            grows, still = _layer(layer)
            window = getattr(layer, "max_size", None)
            if grows and window:
                windows.append((grows, window + chunk))
            else:
                per_token += grows
            fixed += still
        return cls(per_token, windows, fixed, getattr(cache[0], "step", 256))

    def bytes_for(self, tokens: int, rows: int = 1) -> int:
        """`rows` caches of `tokens` tokens each (a batch padded to its longest)."""
        tokens = -(-tokens // self.step) * self.step
        sliding = sum(size * min(tokens, window) for size, window in self.windows)
        return rows * (tokens * self.per_token + sliding + self.fixed)

    def as_dict(self) -> dict:
        return {
            "bytes_per_token": self.per_token,
            "sliding_layers": len(self.windows),
            "sliding_bytes_per_token": sum(size for size, _ in self.windows),
        }


class KVLedger:
    """One worker's KV bytes: each engine's claim against `room()`, what the
    weights leave of the budget (None: no limit). Engine threads call it:
    a native lock."""

    def __init__(self, room=lambda: None):
        self.room = room
        self.claims: dict[str, int] = {}
        self._lock = native_lock()

    def over(self, name: str, claim: int, cached: int = 0) -> int:
        """Bytes by which `claim` (the engine's whole claim) and its prefix
        cache in RAM (`cached`) overrun the room."""
        room = self.room()
        if room is None:
            return 0
        with self._lock:
            others = sum(v for k, v in self.claims.items() if k != name)
        return max(0, others + claim + cached - room)

    def set(self, name: str, claim: int) -> None:
        with self._lock:
            self.claims[name] = claim

    def drop(self, name: str) -> None:
        with self._lock:
            self.claims.pop(name, None)


class KVMemory:
    """One engine's KV needs: the tokens each request holding a cache may
    grow to (running and paused ones), against the worker's ledger;
    `cached()` is the engine's prefix cache in RAM, and `shrink(n)` frees n
    bytes of it (only its own engine thread may: another model's prefix
    cache is bounded by IMPETUS_PROMPT_CACHE_BYTES, not counted here)."""

    def __init__(self, name: str, size: KVSize, ledger: KVLedger, stats, cached=lambda: 0, shrink=lambda n: None,
                 output_reserve: int = 2048):
        self.name, self.size, self.ledger, self.stats = name, size, ledger, stats
        self.cached, self.shrink = cached, shrink
        self.output_reserve = output_reserve
        self.holding: dict[object, int] = {}  # handle -> the tokens its cache is counted at

    def counted(self, prompt: int, max_tokens: int) -> int:
        """The tokens a request is counted at: its prompt and its output, `output_reserve` at most."""
        return prompt + min(max_tokens, self.output_reserve)

    def tokens(self, handle) -> int:
        return self.counted(len(handle.prompt_tokens), handle.params.max_tokens)

    def grow(self, handle, length: int) -> None:
        """An answer past what it was counted at claims one more buffer step."""
        if handle in self.holding and length > self.holding[handle]:
            self.holding[handle] = length + self.size.step
            self._set(self.claim(self.holding.values()))

    def claim(self, lengths) -> int:
        lengths = list(lengths)
        return self.size.bytes_for(max(lengths), rows=len(lengths)) if lengths else 0

    def too_large(self, prompt: int, max_tokens: int) -> str | None:
        """Why a request can never run here, even alone; None when it can."""
        tokens = self.counted(prompt, max_tokens)
        need, room = self.size.bytes_for(tokens), self.ledger.room()
        if room is None or need <= room:
            return None
        return (
            f"This request needs {need / 2**20:.0f} MiB of KV cache for its {tokens} tokens (its prompt "
            f"and output); this worker has {max(room, 0) / 2**20:.0f} MiB for it. Please reduce the prompt "
            f"or max_tokens."
        )

    def fits(self, handle) -> bool:
        """Room for `handle` beside the requests holding a cache, once the
        prefix cache in RAM has given up what it must."""
        claim = self.claim([*self.holding.values(), self.tokens(handle)])
        over = self.ledger.over(self.name, claim, self.cached())
        if over:
            self.shrink(over)
            over = self.ledger.over(self.name, claim, self.cached())
        return not over

    def take(self, handle) -> None:
        self.holding[handle] = self.tokens(handle)
        self._set(self.claim(self.holding.values()))

    def release(self, handle) -> None:
        if self.holding.pop(handle, None) is not None:
            self._set(self.claim(self.holding.values()))

    def _set(self, claim: int) -> None:
        self.ledger.set(self.name, claim)
        self.stats.kv_bytes = claim
        self.stats.kv_bytes_peak = max(self.stats.kv_bytes_peak, claim)

    def close(self) -> None:
        self.ledger.drop(self.name)
