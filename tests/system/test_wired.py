"""The wired limit (impetus.system.wired), under a device that reports a
recommended working set as Metal does (this CPU reports none): mlx-lm's own
generators, freed in the order a worker frees them, put the limit back to
the OS default while a model still serves; the engine's do not."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.generate import BatchGenerator

from impetus.engine.engine import Engine
from impetus.system import wired

RECOMMENDED = 8 << 30


@pytest.fixture
def metal_like(monkeypatch):
    """Metal's answers: a recommended working set, and a wired limit that starts at 0."""
    limits = [0]

    def set_wired_limit(size):
        previous = limits[-1]
        limits.append(size)
        return previous

    monkeypatch.setattr(mx, "device_info", lambda: {"max_recommended_working_set_size": RECOMMENDED})
    monkeypatch.setattr(mx, "set_wired_limit", set_wired_limit)
    monkeypatch.setattr(mx, "synchronize", lambda *a: None)
    wired.own.cache_clear()
    yield limits
    wired.own.cache_clear()


def test_mlx_lms_generators_unwire_the_weights_when_an_older_one_is_freed(loaded_model, metal_like):
    first, second = BatchGenerator(loaded_model.model), BatchGenerator(loaded_model.model)
    assert metal_like[-1] == RECOMMENDED
    first.close()  # the older one: it found 0, and puts 0 back while the second still runs
    assert metal_like[-1] == 0
    second.close()


def test_the_engines_generators_leave_the_limit_to_the_worker(loaded_model, settings, metal_like):
    engines = [Engine(loaded_model, settings) for _ in range(2)]
    generators = [engine.batch.new_generator() for engine in engines]
    generators.append(engines[0].batch.new_generator())  # an engine's restart: a new one while the old lives
    for generator in generators:
        generator.close()
    del generators
    assert metal_like[-1] == RECOMMENDED and 0 not in metal_like[1:]
    assert wired.own() == RECOMMENDED
