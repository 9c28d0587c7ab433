"""Giving memory back to the OS when a worker has nothing to do.

A worker's resident memory is its arrays (weights, prefix cache, a running
batch's KV buffers), MLX's cache of freed buffers (capped by
IMPETUS_MLX_CACHE_LIMIT_BYTES, 1 GiB by default) and, on Linux, whatever glibc
keeps of what MLX freed past that cap. The last two depend on history: the
largest batch the worker has seen, and in which order. Measured on a 2-core
CPU (SmolLM2-135M float32, rounds of 4, 8 and 16 streams abandoned after their
first token): arrays in use stayed at 514 MiB, but resident memory went from
794 to 1,073 MiB and its part outside MLX from 235 to 463 MiB. After
`mx.clear_cache()` and glibc's `malloc_trim(0)` resident memory was 655-697
MiB after every round, its part outside MLX 141-183 MiB.

Released after a quiet spell (IMPETUS_IDLE_RELEASE_S), an idle server holds
only its arrays, which the people sharing the Mac get back, and the
operator's resident-memory graph follows use, not history. The first request
afterwards pays for fresh buffers: ~80 ms more to the first token of a
one-line prompt here (820 vs 740 ms), within noise for a batch of eight; the
release itself takes 1-15 ms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (macOS and musl return free pages themselves or lack it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Drop MLX's cache of freed buffers and hand the C heap's free pages back."""
    import mlx.core as mx

    mx.clear_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
