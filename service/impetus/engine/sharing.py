"""A prefix shared by requests in flight: computed once, then started from.

N agents with one system prompt arrive together; without this, each
prefills the prompt itself (at N=8 and a 3,600-token prompt, 28,832 prompt
tokens computed instead of 3,701; benchmarks/README.md, shared-prefix).
`InFlightPrefixes.wait` says whether a waiting request should hold back
because a running (or just admitted) request is computing a long prefix
of its prompt; once that prefix is computed it is copied into the prefix
cache (`snapshot`), and the waiting request starts from it like any other
cached prefix. A model whose cache cannot be cut back (Gemma 3) shares only
what the running request keeps at its prompt's points (`Batch.keep_points`):
the waiting request waits for the longest such point within their common
prefix. It decides only "wait or go": admission decides the slots,
and the batch inserts.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import KVCache, can_trim_prompt_cache, trim_prompt_cache

from impetus.engine.batch import Batch
from impetus.engine.request import RequestHandle
from impetus.engine.running import Running


class InFlightPrefixes:
    def __init__(self, batch: Batch, enabled: bool):
        self._batch = batch
        self.enabled = enabled

    def wait(self, handle: RequestHandle, admitted: list[RequestHandle]) -> bool:
        """True while `handle` should wait: its prompt shares at least a
        prefill chunk more than the prefix cache holds with a request whose
        prefill has not got that far yet (or that is being admitted in this
        round). Once it has, that prefix is copied into the prefix cache
        (`snapshot`) and the handle starts from it."""
        if not self.enabled:
            return False
        prompt = handle.cache_key  # images told apart by content (engine.media)
        chunk = self._batch.prefill_step
        if len(prompt) <= chunk:
            return False
        cached = None
        for other in admitted:
            common = min(common_prefix(prompt, other.cache_key, chunk), len(prompt) - 1)
            if common >= chunk:
                cached = self.cached_length(prompt) if cached is None else cached
                if common - cached >= chunk:
                    return True
        best, common = None, 0
        for state in self._batch.running.values():
            if handle not in state.common:
                state.common[handle] = common_prefix(prompt, state.handle.cache_key, chunk)
            if state.common[handle] > common:
                best, common = state, state.common[handle]
        common = min(common, len(prompt) - 1)
        if not self._batch.prefixes.trims:  # only a point of its prompt can be shared (Batch.keep_points)
            common = max((p for p in best.points if p <= common), default=0) if best is not None else 0
        if common < chunk or common - (self.cached_length(prompt) if cached is None else cached) < chunk:
            return False
        if best.in_cache < common:
            return True
        if self._batch.prefixes.trims:
            self.snapshot(best, common)
        return False

    def cached_length(self, prompt: list[int]) -> int:
        """How much of the prompt the prefix cache can give (without copying anything)."""
        return self._batch.prefixes.cached_length(prompt)

    def snapshot(self, state: Running, length: int) -> None:
        """Put the first `length` tokens of a running request's KV cache into
        the prefix cache."""
        batch = self._batch
        uid = batch.uid_of(state.handle)
        cache, tokens = batch.generator.extract_cache([uid])[uid]
        if len(tokens) < length or tokens[:length] != state.handle.prompt_tokens[:length] \
                or not can_trim_prompt_cache(cache):
            return
        trim_prompt_cache(cache, len(tokens) - length)
        for layer in cache:
            if type(layer) is KVCache:  # drop the trimmed tail from memory too
                layer.keys = mx.contiguous(layer.keys[..., :layer.offset, :])
                layer.values = mx.contiguous(layer.values[..., :layer.offset, :])
        batch.prefixes.keep(state.handle.key_of(tokens[:length]), cache)
        batch.stats.shared_prefixes += 1


def common_prefix(a: list[int], b: list[int], chunk: int) -> int:
    """The length of the common prefix of two prompts; 0 when it is shorter
    than `chunk` (checked first: most pairs differ within it)."""
    limit = min(len(a), len(b))
    if limit < chunk or a[:chunk] != b[:chunk]:
        return 0
    low, high = chunk, limit  # a[:low] == b[:low]
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low
