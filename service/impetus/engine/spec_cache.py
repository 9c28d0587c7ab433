"""The KV cache of sequences that speculate together: a batch whose rows
accept different numbers of guesses per step.

mlx-lm's `BatchKVCache` keeps every row's keys in one [B, heads, T, dim]
buffer written at one shared index, left-padded so that all rows end there.
A verification step writes 1 + K positions for every row; row i keeps only
1 + a_i of them (its last token and the guesses the model agreed with).
mlx-lm's own answer to rows of different lengths is to roll each row right
(`dynamic_roll`, as `finalize` does after a right-padded prefill), but that
copies the whole cache: 138 ms for 4 rows of 1,024 tokens of the 135M model
on this 2-core CPU, more than a whole 4-row decode step (96 ms). Here the
rejected positions stay where they are and are masked out as holes instead:
`keep` trims what no row kept, marks the rest as holes, and moves each
row's RoPE offset back by its own holes (positions are the row's own token
count, not the buffer index), and `make_mask` adds the holes to the causal
mask. Holes cost attention work only; when they make up more than a
quarter of the buffer (plus 64 positions), `compact` gathers each row's
valid positions to the right, once.

What upstream would need instead: a per-row write index (a paged or
ragged cache, as vLLM's), so that a row can trim its own tail.
"""

from __future__ import annotations

import weakref

import mlx.core as mx
import numpy as np
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import BatchKVCache, KVCache

COMPACT_SLACK = 64


class HoleyKVCache(BatchKVCache):
    """One layer's cache; `valid` ([B, T] booleans, shared by all layers of
    a `SpecBatchCache`) says which positions hold a token of the row."""

    def __init__(self, left_padding):
        super().__init__(left_padding)
        # A weak reference: a cycle (batch -> layers -> batch) would keep the
        # whole KV buffer alive until Python's cycle collector ran.
        self.batch: weakref.ref | None = None

    def make_mask(self, N: int, return_array: bool = False, **kwargs):
        valid = self.batch().valid
        mask = create_causal_mask(N, offset=self._idx)
        valid = np.concatenate([valid, np.ones((valid.shape[0], N), dtype=bool)], axis=1)
        return mask & mx.array(valid)[:, None, None, :]


class SpecBatchCache:
    def __init__(self, layers: list[HoleyKVCache], valid: np.ndarray):
        self.layers = layers
        self.valid = valid
        for layer in layers:
            layer.batch = weakref.ref(self)

    @classmethod
    def merge(cls, rows: list[list[KVCache]]) -> SpecBatchCache:
        """One batch cache from each row's per-layer KVCaches (copied)."""
        layers = [HoleyKVCache.merge([row[layer] for row in rows]) for layer in range(len(rows[0]))]
        padding = np.array(layers[0].left_padding.tolist())
        valid = np.arange(layers[0]._idx)[None, :] >= padding[:, None]
        return cls(layers, valid)

    @property
    def size(self) -> int:
        return self.valid.shape[1]

    def keep(self, kept: list[int], written: int) -> None:
        """After a step that wrote `written` positions per row: row i keeps
        its first `kept[i]`."""
        most = max(kept)
        holes = [most - k for k in kept]
        shift = mx.array(holes) if any(holes) else None
        for layer in self.layers:
            layer.trim(written - most)
            if shift is not None:
                layer.offset = layer.offset - shift
        block = np.arange(most)[None, :] < np.array(kept)[:, None]
        self.valid = np.concatenate([self.valid, block], axis=1)
        rows_valid = self.valid.sum(axis=1)
        if self.size - int(rows_valid.max()) > COMPACT_SLACK + self.size // 4:
            self.compact()

    def rewind(self, counts: list[int]) -> None:
        """Row i forgets the last counts[i] positions (all rows wrote them
        in the latest passes): a draft model's guesses the target refused."""
        common = min(counts)
        shift = mx.array([n - common for n in counts]) if max(counts) > common else None
        for layer in self.layers:
            layer.trim(common)
            if shift is not None:
                layer.offset = layer.offset - shift
        if common:
            self.valid = self.valid[:, :self.size - common]
        for row, n in enumerate(counts):
            if n > common:
                self.valid[row, self.size - (n - common):] = False

    def compact(self) -> None:
        """Each row's valid positions gathered to the right of a buffer just
        long enough for the longest row (left padding again, no holes)."""
        counts = self.valid.sum(axis=1)
        length = int(counts.max())
        index = np.zeros((len(counts), length), dtype=np.int32)
        for row, count in enumerate(counts):
            index[row, length - count:] = np.nonzero(self.valid[row])[0]
        gather = mx.array(index)[:, None, :, None]
        padding = length - counts
        for layer in self.layers:
            layer.keys = mx.take_along_axis(layer.keys[..., :layer._idx, :], gather, axis=2)
            layer.values = mx.take_along_axis(layer.values[..., :layer._idx, :], gather, axis=2)
            layer._idx = length
            layer.left_padding = mx.array(padding.tolist())
        mx.eval([(layer.keys, layer.values) for layer in self.layers])
        self.valid = np.arange(length)[None, :] >= padding[:, None]

    def extract(self, row: int) -> list[KVCache]:
        """Row `row`'s tokens as plain per-layer KVCaches (copied)."""
        positions = np.nonzero(self.valid[row])[0]
        contiguous = len(positions) == 0 or positions[-1] - positions[0] + 1 == len(positions)
        taken = None if contiguous else mx.array(positions.astype(np.int32))
        caches = []
        for layer in self.layers:
            cache = KVCache()
            if contiguous:
                start, end = (int(positions[0]), int(positions[-1]) + 1) if len(positions) else (0, 0)
                cache.keys = mx.contiguous(layer.keys[row:row + 1, :, start:end])
                cache.values = mx.contiguous(layer.values[row:row + 1, :, start:end])
            else:
                cache.keys = mx.take(layer.keys[row:row + 1], taken, axis=2)
                cache.values = mx.take(layer.values[row:row + 1], taken, axis=2)
            cache.offset = len(positions)
            caches.append(cache)
        mx.eval([(cache.keys, cache.values) for cache in caches])
        return caches

    def remove(self, rows: list[int]) -> None:
        """Drop rows; positions no remaining row uses are cut from the left."""
        keep = [row for row in range(self.valid.shape[0]) if row not in set(rows)]
        self.valid = self.valid[keep]
        taken = mx.array(keep)
        lead = int(np.argmax(self.valid.any(axis=0))) if self.valid.any() else self.size
        for layer in self.layers:
            layer.keys, layer.values = layer.keys[taken], layer.values[taken]
            layer.offset, layer.left_padding = layer.offset[taken], layer.left_padding[taken]
            if lead:
                layer.keys, layer.values = layer.keys[..., lead:, :], layer.values[..., lead:, :]
                layer._idx -= lead
                layer.left_padding = mx.maximum(layer.left_padding - lead, 0)
        self.valid = self.valid[:, lead:]
