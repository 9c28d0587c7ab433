"""The prefix cache: the KV caches of prompts seen before, in RAM and on disk.

`Prefixes.fetch` gives a new request the longest prefix of its prompt that
is cached: from mlx-lm's `LRUPromptCache` in RAM, or, when the disk tier
(`prefix_disk`) holds a longer one, from there (then also into RAM).
`Prefixes.keep` takes a computed cache: a finished request's, a prefix that
requests in flight share, or a prompt's cache at one of its points
(`SamplingParams.keep_prefixes`), which also goes to disk.

A model whose caches cannot be cut back (`trims` False: Gemma 3's
sliding-window layers keep only their last 512 positions) can start only
from a prefix kept at exactly that length; a prompt whose whole length is
cached is then started from the prefix one token shorter, since the last
token must be computed again for its logits. This room decides where a
cache comes from and where it goes; it must not decide which prefixes are
worth keeping (the API's points, the batch's calls) nor touch the batch.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import KVCache, LRUPromptCache, trim_prompt_cache

from impetus.engine.kv_quant import QuantizedKV, adopt, portable
from impetus.engine.prefix_disk import DiskTier, fingerprint


class Prefixes:
    def __init__(self, loaded, settings, stats, new_cache):
        self.name = loaded.name
        self.stats = stats
        self.ram = LRUPromptCache(max_size=settings.prompt_cache_entries, max_bytes=settings.prompt_cache_bytes)
        self.trims = all(type(c) in (KVCache, QuantizedKV) for c in new_cache())
        self.disk: DiskTier | None = None
        if settings.prefix_cache_disk and settings.prefix_cache_disk_bytes > 0:
            self.disk = DiskTier(settings.data_dir / "prefix-cache",
                                 fingerprint(loaded.revision, loaded.weights_dtype,
                                             settings.kv_bits and f"{settings.kv_bits}/{settings.kv_group_size}"),
                                 settings.prefix_cache_disk_bytes, stats)
        self.disk_min_tokens = settings.prefix_cache_disk_min_tokens

    def __len__(self) -> int:
        return len(self.ram)

    @property
    def nbytes(self) -> int:
        return self.ram.nbytes

    def fetch(self, prompt: list[int]) -> tuple[list | None, list[int]]:
        """The cache of the longest cached prefix of `prompt` (None: none),
        and the tokens left to compute (at least the last one)."""
        if self.trims:
            cache, rest = self.ram.fetch_nearest_cache(self.name, prompt)
            if cache is not None and not rest:  # whole prompt cached: its last token again, for logits
                trim_prompt_cache(cache, 1)
                rest = prompt[-1:]
        else:
            cache, rest = self.ram.fetch_nearest_cache(self.name, prompt[:-1])
            rest = rest + prompt[-1:]
        if self.disk is not None and len(prompt) - len(rest) < len(prompt) - 1:
            found = self.disk.fetch(prompt, longer_than=len(prompt) - len(rest))
            if found is not None:
                stored, length = found
                adopt(stored)
                self.ram.insert_cache(self.name, list(prompt[:length]), stored)
                return self.ram.fetch_nearest_cache(self.name, prompt[:length])[0], prompt[length:]  # a copy
        if cache is not None:
            self.stats.prefix_hits_ram += 1
        return cache, rest

    def cached_length(self, prompt: list[int]) -> int:
        """How much of the prompt the RAM tier can give (without copying anything)."""
        found = self.ram._trie.search(self.name, prompt)
        if found.exact is not None:
            return len(prompt)
        longer = found.common_prefix if found.longer is not None and self.trims else 0
        return max(len(found.shorter or ()), longer)

    def keep(self, tokens: list[int], cache: list, point: bool = False) -> None:
        """Into RAM (evaluated first: an extracted cache is a lazy slice of
        the whole batch's KV buffers, and kept so it held them all: 40 mixed
        streams left 3.8 GB held by a prefix cache that counted 0.35 GB);
        a prompt's point long enough also to disk."""
        mx.eval([c.state for c in cache])
        if point and self.disk is not None and len(tokens) >= self.disk_min_tokens:
            self.disk.store(tokens, portable(cache))
        self.ram.insert_cache(self.name, list(tokens), cache)

    def shrink(self, n: int) -> None:
        """Give up at least `n` bytes of RAM, least recently used first (the
        KV caches of running requests need them; the disk tier keeps points)."""
        self.ram.trim_to(n_bytes=self.ram.nbytes - n)

    def snapshot(self) -> dict:
        files, size = self.disk.usage() if self.disk is not None else (0, 0)
        s = self.stats
        return {"prefix_cache_entries": len(self.ram), "prefix_cache_bytes": self.ram.nbytes,
                "prefix_cache_disk": self.disk is not None and self.disk.enabled,
                "prefix_cache_disk_entries": files, "prefix_cache_disk_bytes": size,
                "prefix_hits_ram": s.prefix_hits_ram, "prefix_hits_disk": s.disk_hits,
                "prefix_disk_bytes_read": s.disk_bytes_read, "prefix_disk_bytes_written": s.disk_bytes_written,
                "prefix_disk_writes": s.disk_writes, "prefix_disk_skipped": s.disk_skipped,
                "prefix_disk_evicted": s.disk_evicted}
