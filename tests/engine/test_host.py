"""EngineHost: models loaded on demand within a memory budget, least recently
used first out, pinned ones never, keep-alive, and failures that leave the
other models serving. Real models: the default one, and aliases of it served
with other weights (float32, float16, the stored 4-bit), so each is a model of
its own with its own memory."""

from __future__ import annotations

import time

import mlx.core as mx
import pytest

from impetus.engine.engine import Engine
from impetus.engine.host import EngineHost, ModelLoadFailed, ModelTooLarge, NoRoom
from impetus.engine.request import FinishEvent, SamplingParams
from impetus.engine.waiters import ThreadWaiter
from impetus.models.store import DEFAULT_MODEL, ModelNotFound
from impetus.settings import Settings

pytestmark = pytest.mark.slow

MB = 10**6
F32, F16, Q4 = DEFAULT_MODEL, "smol-f16", "smol-q4"  # ~538, ~269 and ~98 MB of weights


def make_host(home, budget_mb: int, **settings) -> EngineHost:
    return EngineHost(Settings(data_dir=home, weights_dtype="float32", **settings), budget_bytes=budget_mb * MB)


def answer(engine: Engine) -> str:
    tokens = engine.tokenizer.encode("The capital of France is")
    handle = engine.submit(tokens, SamplingParams(max_tokens=4, temperature=0.0), ThreadWaiter())
    text = ""
    for event in handle.events(timeout=120):
        text += event.text
        if isinstance(event, FinishEvent):
            assert event.reason in ("length", "stop"), event
            return text
    raise AssertionError("no finish event")


def test_least_recently_used_is_unloaded_to_make_room(models_home):
    host = make_host(models_home, 900)
    try:
        assert answer(host.acquire(F32)) and answer(host.acquire(Q4))  # 538 + 98 MB fit
        assert set(host.slots) == {F32, Q4}
        host.acquire(F32)  # Q4 is now the least recently used
        host.acquire(F16)  # 636 + 269 > 900: one must go
        assert set(host.slots) == {F32, F16}
        assert host.memory_used() <= 900 * MB
        # Each is its own model: the weights are what the alias asks for.
        dtypes = {n: s.engine.loaded.weights_dtype for n, s in host.slots.items()}
        assert dtypes == {F32: "float32", F16: "float16"}
        assert answer(host.acquire(F16))
    finally:
        host.stop()


def test_pinned_models_stay_and_a_model_that_cannot_fit_is_refused(models_home):
    host = make_host(models_home, 850, pinned_models=[F32])
    try:
        host.acquire(F32)
        host.acquire(Q4)
        with pytest.raises(NoRoom, match="pinned"):  # 538 + 98 + 269 > 850, and both are pinned now
            host.load(Q4, pin=True)
            host.acquire(F16)
        assert set(host.slots) == {F32, Q4}
        host.load(Q4, pin=False)
        host.acquire(F16)  # Q4 (unpinned) makes room; the pinned default stays
        assert set(host.slots) == {F32, F16}
        with pytest.raises(ModelTooLarge, match="budget"):
            make_host(models_home, 300).acquire(F32)
    finally:
        host.stop()


def test_a_broken_model_fails_clearly_and_the_others_keep_serving(models_home):
    host = make_host(models_home, 2000)
    try:
        good = host.acquire(Q4)
        with pytest.raises(ModelLoadFailed, match="broken-weights"):
            host.acquire("broken-weights")
        with pytest.raises(ModelLoadFailed, match="broken-weights"):  # remembered: retries do not reload it
            host.acquire("broken-weights")
        with pytest.raises(ModelLoadFailed, match="could not be read"):
            host.acquire("broken")
        with pytest.raises(ModelNotFound):
            host.acquire("no-such-model")
        assert set(host.slots) == {Q4} and host.ready()
        assert answer(good)
    finally:
        host.stop()


def test_keep_alive_unloads_idle_models_and_frees_their_memory(models_home):
    host = make_host(models_home, 2000)
    try:
        host.load(F32, keep_alive_s=0.2)
        before = mx.get_active_memory()
        host.load(Q4)  # no keep-alive: stays until memory is needed
        time.sleep(0.4)
        assert host.unload_expired() == [F32]
        assert set(host.slots) == {Q4}
        assert mx.get_active_memory() < before - 400 * MB  # the float32 weights are gone
        assert answer(host.acquire(Q4))
    finally:
        host.stop()


def resident_bytes() -> int:
    from impetus.metrics import resident_memory_bytes

    return resident_memory_bytes()


def test_an_idle_worker_gives_freed_memory_back_once_per_quiet_spell(models_home):
    host = make_host(models_home, 2000, idle_release_s=0.3)
    try:
        engine = host.acquire(F32)
        story = engine.tokenizer.encode("Once upon a time")
        handles = [engine.submit(story, SamplingParams(max_tokens=2000, temperature=1.0, seed=i), ThreadWaiter())
                   for i in range(8)]
        time.sleep(0.5)  # longer than idle_release_s, but the batch is still running
        assert engine.in_flight and not host.release_memory_when_idle()
        for handle in handles:
            handle.cancel()
            assert list(handle.events(timeout=120))[-1].reason in ("cancelled", "length", "stop")
        assert not host.release_memory_when_idle()  # it served a moment ago
        cached, active, resident = mx.get_cache_memory(), mx.get_active_memory(), resident_bytes()
        assert cached > 8 * 2**20  # the batch's freed KV buffers, kept for reuse
        time.sleep(0.4)
        assert host.release_memory_when_idle()
        assert mx.get_cache_memory() == 0 and mx.get_active_memory() <= active  # (the engine may still drop a last step's arrays)
        assert resident - resident_bytes() > cached // 2, (resident, resident_bytes(), cached)
        time.sleep(0.4)
        assert not host.release_memory_when_idle()  # once per quiet spell...
        late = mx.ones((2**20,)) + 1  # ...unless something freed since refills MLX's cache
        mx.eval(late)
        del late
        assert mx.get_cache_memory() > 0 and host.release_memory_when_idle() and mx.get_cache_memory() == 0
        assert answer(host.acquire(F32))  # serving again after the release
        time.sleep(0.4)
        assert host.release_memory_when_idle()
    finally:
        host.stop()


def test_idle_release_can_be_turned_off(models_home):
    host = make_host(models_home, 2000, idle_release_s=0)
    try:
        assert answer(host.acquire(F32))
        time.sleep(0.2)
        assert not host.release_memory_when_idle() and mx.get_cache_memory() > 0
    finally:
        host.stop()


def test_a_draft_model_is_loaded_once_beside_the_models_it_serves(models_home):
    """IMPETUS_SPECULATIVE=draft with IMPETUS_DRAFT_MODEL: the engine guesses
    with the draft (loaded with its alias's own weights); a draft that cannot
    be found leaves prompt lookup in place, and the model still answers."""
    host = make_host(models_home, 2000, speculative="draft", draft_model=Q4)
    try:
        engine = host.acquire(F32)
        assert engine.snapshot()["speculative"] == "draft"
        assert host._drafts[Q4].weights_dtype == "stored"
        plain = Engine(engine.loaded, host.settings.model_copy(update={"speculative": "off"}))
        plain.start()
        try:
            assert answer(engine) == answer(plain)  # the draft changes no token
        finally:
            plain.stop()
        assert host.acquire(F16).snapshot()["speculative"] == "draft"
        assert list(host._drafts) == [Q4]
        # The draft serving as a model is not its own draft.
        assert host.acquire(Q4).snapshot()["speculative"] == "ngram"
    finally:
        host.stop()
    host = make_host(models_home, 2000, speculative="draft", draft_model="no-such-model")
    try:
        engine = host.acquire(F32)
        assert engine.snapshot()["speculative"] == "ngram" and answer(engine)
    finally:
        host.stop()
