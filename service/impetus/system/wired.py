"""One owner of MLX's wired limit in a worker.

On Apple silicon, memory that is wired stays resident: the weights a model
decodes from are never paged out under pressure. mlx-lm's BatchGenerator
raises the wired limit to the GPU's recommended working set when it is built
and puts back the value it found when it is freed. A worker builds a new
generator while the old one lives (after an engine restart), and each loaded
model has its own; the one freed last may restore 0, the value before any
of them, and on macOS 15+ the weights are no longer wired while the worker
still serves. So the worker sets the limit once (`own`), and every generator
it builds is told it owns nothing to restore (`disown`).

On a CPU, and on any device that reports no recommended working set, there
is nothing to wire and both are no-ops.
"""

from __future__ import annotations

import functools


@functools.cache
def own() -> int | None:
    """Set the wired limit to the device's recommended working set, once a process; the size, or None."""
    import mlx.core as mx

    size = mx.device_info().get("max_recommended_working_set_size")
    if not size:
        return None
    mx.set_wired_limit(size)
    return size


def disown(generator) -> None:
    """A generator built here restores no wired limit when it is freed."""
    own()
    if getattr(generator, "_old_wired_limit", None) is not None:
        generator._old_wired_limit = None
