"""KV caches in 8 or 4 bits inside mlx-lm's batch (`kv_bits`).

On a Mac, memory, not compute, caps how many agents one machine serves:
each running request holds its whole context's keys and values. mlx-lm
quantizes a single request's cache (`QuantizedKVCache`) but its batch
generator cannot (mlx-lm issue 1583): `BatchKVCache` holds plain arrays.
`BatchQuantizedKVCache` is `BatchKVCache` with each of keys and values held
as MLX's quantized triple (packed data, scales, biases), quantized as they
are written; attention then goes through mlx-lm's quantized path
(`scaled_dot_product_attention` sees `bits` on the cache), which uses
Metal's quantized matmul kernels. `QuantizedKV` is the one-request cache
the batch merges from and extracts into (the prefix cache, pausing), and
`quantized_cache` makes one for a model: its full-attention layers
quantized, its sliding-window layers (Gemma 3's) left as they are (mlx-lm
has no quantized rotating cache; they hold at most their window).

Per token and layer, a float32 cache (this CPU's) holds 8 bytes per
head dimension for keys and values; 8 bits hold 2 + 2 x 8 / group_size
(0.28x with groups of 64), 4 bits 1 + 0.25 (0.16x); against a Mac's
bfloat16 cache, 0.53x and 0.28x. This room decides how a quantized cache
is laid out and moved; it must not decide who runs or what is cached.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.cache import BatchKVCache, KVCache, QuantizedKVCache, dynamic_roll, make_prompt_cache


class QuantizedKV(QuantizedKVCache):
    """One request's quantized cache, which the batch can take in."""

    @classmethod
    def merge(cls, caches):
        return BatchQuantizedKVCache.merge(caches)

    def size(self) -> int:
        return self.offset


def quantized_cache(model, bits: int, group_size: int) -> list:
    """A new cache for `model` with its full-attention layers in `bits`."""
    return [QuantizedKV(group_size=group_size, bits=bits) if type(c) is KVCache else c
            for c in make_prompt_cache(model)]


def portable(cache: list) -> list:
    """The cache as mlx-lm's own classes, which its prompt-cache files name
    (`load_prompt_cache` finds a class by name in mlx-lm): for the disk tier."""
    out = []
    for layer in cache:
        if type(layer) is QuantizedKV:
            plain = QuantizedKVCache(group_size=layer.group_size, bits=layer.bits)
            plain.keys, plain.values, plain.offset = layer.keys, layer.values, layer.offset
            layer = plain
        out.append(layer)
    return out


def adopt(cache: list) -> list:
    """A cache read back by mlx-lm (as plain `QuantizedKVCache`), made one
    the batch takes in."""
    for layer in cache:
        if type(layer) is QuantizedKVCache:
            layer.__class__ = QuantizedKV
    return cache


def _zeros(batch: int, heads: int, length: int, dim: int, dtype, bits: int, group_size: int) -> tuple:
    return (mx.zeros((batch, heads, length, dim * bits // 32), dtype=mx.uint32),
            mx.zeros((batch, heads, length, dim // group_size), dtype=dtype),
            mx.zeros((batch, heads, length, dim // group_size), dtype=dtype))


class BatchQuantizedKVCache(BatchKVCache):
    def __init__(self, left_padding: list[int], bits: int = 8, group_size: int = 64):
        super().__init__(left_padding)
        self.bits = bits
        self.group_size = group_size

    def update_and_fetch(self, keys, values):
        prev, n = self._idx, keys.shape[2]
        if self.keys is None or prev + n > self.keys[0].shape[2]:
            batch, heads = keys.shape[:2]
            steps = (self.step + n - 1) // self.step * self.step
            new_k = _zeros(batch, heads, steps, keys.shape[3], keys.dtype, self.bits, self.group_size)
            new_v = _zeros(batch, heads, steps, values.shape[3], values.dtype, self.bits, self.group_size)
            if self.keys is not None:
                if prev % self.step != 0:
                    self.keys, self.values = tree_map(lambda x: x[..., :prev, :], (self.keys, self.values))
                self.keys = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(self.keys, new_k))
                self.values = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(self.values, new_v))
            else:
                self.keys, self.values = new_k, new_v
        self.offset = self.offset + n
        self._idx += n
        for stored, new in ((self.keys, mx.quantize(keys, group_size=self.group_size, bits=self.bits)),
                            (self.values, mx.quantize(values, group_size=self.group_size, bits=self.bits))):
            for part, value in zip(stored, new):
                part[..., prev:self._idx, :] = value
        return self.keys_and_values()

    def keys_and_values(self):
        return tree_map(lambda x: x[..., :self._idx, :], (self.keys, self.values))

    def finalize(self):
        if self._right_padding is not None:
            padding = self._right_padding
            self.keys, self.values = tree_map(lambda x: dynamic_roll(x, padding[:, None], axis=2),
                                              (self.keys, self.values))
            self.offset = self.offset - padding
            self.left_padding += padding
            self._right_padding = None

    def filter(self, batch_indices):
        if self.keys is not None:
            self.keys, self.values = tree_map(lambda x: x[batch_indices], (self.keys, self.values))
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        shift = min(self.left_padding.tolist())
        if shift > 0:
            if self.keys is not None:
                self.keys, self.values = tree_map(lambda x: x[..., shift:, :], (self.keys, self.values))
            self._idx -= shift
            self.left_padding -= shift

    def extend(self, other):
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        top = max(self._idx, other._idx)
        size = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)
        shapes = next(c for c in (self, other) if c.keys is not None)

        def pad(c):
            if c.keys is None:
                rows = c.offset.shape[0]
                keys, values = tree_map(lambda x: mx.zeros((rows, x.shape[1], 0, x.shape[3]), x.dtype),
                                        (shapes.keys, shapes.values))
            else:
                keys, values = c.keys, c.values
            left = top - c._idx
            right = size - keys[0].shape[2] - left
            if right < 0:
                keys, values = tree_map(lambda x: x[..., :right, :], (keys, values))
                right = 0
            if left or right:
                keys, values = tree_map(lambda x: mx.pad(x, [(0, 0), (0, 0), (left, right), (0, 0)]),
                                        (keys, values))
            return keys, values, c.offset, c.left_padding + left

        (k1, v1, o1, l1), (k2, v2, o2, l2) = pad(self), pad(other)
        self.keys = tuple(mx.concatenate([a, b]) for a, b in zip(k1, k2))
        self.values = tuple(mx.concatenate([a, b]) for a, b in zip(v1, v2))
        self.offset, self.left_padding = mx.concatenate([o1, o2]), mx.concatenate([l1, l2])
        self._idx = top

    def extract(self, idx):
        cache = QuantizedKV(group_size=self.group_size, bits=self.bits)
        padding = self.left_padding.tolist()[idx]
        cache.keys, cache.values = tree_map(lambda x: mx.contiguous(x[idx:idx + 1, :, padding:self._idx]),
                                            (self.keys, self.values))
        cache.offset = cache.keys[0].shape[2]
        return cache

    @classmethod
    def merge(cls, caches):
        lengths = [c.offset if c.keys is not None else 0 for c in caches]
        longest = max(lengths)
        first = next((c for c in caches if c.keys is not None), caches[0])
        cache = cls([longest - n for n in lengths], bits=first.bits, group_size=first.group_size)
        if longest == 0:
            return cache
        keys, values = tree_map(lambda x: mx.zeros((len(caches), x.shape[1], longest, x.shape[3]), x.dtype),
                                (first.keys, first.values))
        for i, (n, c) in enumerate(zip(lengths, caches)):
            if n:
                for stored, own in ((keys, c.keys), (values, c.values)):
                    for part, value in zip(stored, own):
                        part[i:i + 1, :, longest - n:] = value[..., :n, :]
        cache.keys, cache.values = keys, values
        cache.offset += longest
        cache._idx = longest
        return cache

    @property
    def nbytes(self):
        if self.keys is None:
            return 0
        return sum(x.nbytes for x in (*self.keys, *self.values))
