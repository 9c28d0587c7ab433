"""Admission counts KV bytes (engine.kv_memory): a request whose KV cache
the worker has no room for waits in the queue until a running one ends,
one that could never fit is refused at once, and the prefix cache in RAM
gives its bytes up first. The real default model, without HTTP."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import make_prompt_cache

from impetus.engine.engine import Engine, TooLargeForMemory
from impetus.engine.kv_memory import KVLedger, KVSize
from impetus.engine.kv_quant import quantized_cache
from impetus.engine.request import SamplingParams
from impetus.engine.waiters import ThreadWaiter

from engine_events import tokens_of

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("bits", [None, 8])
def test_the_size_is_what_the_cache_holds(loaded_model, bits):
    model = loaded_model.model
    new = (lambda: quantized_cache(model, bits, 64)) if bits else (lambda: make_prompt_cache(model))
    size = KVSize.measure(model, new)
    assert size.per_token == 30 * 3 * 64 * 2 * 4 * (1 if bits is None else (8 / 32 + 2 * 4 / 64 / 4))
    for length in (100, 300):  # within a buffer step, and past one
        cache = new()
        model(mx.array([list(range(1000, 1000 + length))]), cache=cache)
        mx.eval([c.state for c in cache])
        assert sum(c.nbytes for c in cache) == size.bytes_for(length)


@pytest.fixture(scope="module")
def room() -> dict:
    return {"bytes": None}  # None: no limit


@pytest.fixture(scope="module")
def engine(loaded_model, settings, room):
    engine = Engine(loaded_model, settings, kv_ledger=KVLedger(room=lambda: room["bytes"]))
    engine.start()
    yield engine
    engine.stop()


def ask(engine, text: str, max_tokens: int = 12):
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return engine.submit(prompt, SamplingParams(max_tokens=max_tokens, temperature=0), ThreadWaiter())


QUESTIONS = ["Name a color of the sky.", "What do bees make?"]


def test_a_request_without_room_waits_for_one_to_end_then_answers_the_same(engine, room):
    size = engine.batch.kv.size
    room["bytes"] = None
    free = [ask(engine, q) for q in QUESTIONS]
    free_answers = [tokens_of(h)[0] for h in free]
    assert abs(free[1].admitted_step - free[0].admitted_step) <= 1  # both at once, without a limit
    engine.batch.prefixes.shrink(engine.batch.prefixes.nbytes)  # both start cold again
    room["bytes"] = int(size.bytes_for(256) * 1.5)  # one request's cache, not two
    waits = engine.stats.kv_waits
    held = [ask(engine, q) for q in QUESTIONS]
    held_answers = [tokens_of(h)[0] for h in held]
    assert held_answers == free_answers
    # One waited (the scheduler takes the shorter prompt first) until the other had ended.
    first, second = sorted(held, key=lambda h: h.admitted_step)
    assert engine.stats.kv_waits == waits + 1 and second.waited_for_memory and not first.waited_for_memory
    assert second.admitted_step - first.admitted_step >= len(held_answers[held.index(first)]) - 2
    assert engine.stats.kv_bytes == 0 and engine.stats.kv_bytes_peak >= size.bytes_for(256)
    assert engine.snapshot()["kv_cache"]["waits"] == engine.stats.kv_waits


def test_a_request_that_could_never_fit_is_refused_at_once(engine, room):
    room["bytes"] = engine.batch.kv.size.bytes_for(512)
    with pytest.raises(TooLargeForMemory, match="MiB of KV cache"):
        ask(engine, "Tell me a long story.", max_tokens=1000)
    assert tokens_of(ask(engine, "Tell me a long story.", max_tokens=4))[1].reason == "length"


def test_the_prefix_cache_in_ram_gives_its_bytes_to_a_running_request(engine, room):
    room["bytes"] = None
    engine.batch.prefixes.shrink(engine.batch.prefixes.nbytes)
    first = ask(engine, "Where do penguins live?")
    tokens_of(first)
    kept = engine.batch.prefixes.nbytes
    assert kept > 0 and engine.batch.prefixes.cached_length(first.prompt_tokens) == len(first.prompt_tokens)
    # Room for the new request's cache only if the prefix cache gives most of its bytes up.
    room["bytes"] = engine.batch.kv.size.bytes_for(256) + kept // 4
    _, finish = tokens_of(ask(engine, "What is the tallest mountain?"))
    assert finish.reason in ("stop", "length")
    assert engine.batch.prefixes.cached_length(first.prompt_tokens) < len(first.prompt_tokens)  # it gave way


def test_a_host_serves_an_alias_with_its_own_kv_bits(data_dir, tmp_path):
    from impetus.engine.host import EngineHost
    from impetus.engine.kv_quant import QuantizedKV
    from impetus.models.registry import Registry
    from impetus.models.store import DEFAULT_MODEL
    from impetus.settings import Settings

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    Registry(tmp_path / "models").add_alias("smol-kv8", DEFAULT_MODEL, kv_bits=8)
    host = EngineHost(Settings(data_dir=tmp_path, weights_dtype="float32", prefix_cache_disk=False),
                      budget_bytes=2 * 10**9)
    try:
        engine = host.acquire("smol-kv8")
        assert any(type(layer) is QuantizedKV for layer in engine.batch.new_cache())
        kv = engine.snapshot()["kv_cache"]
        assert kv["bits"] == 8 and kv["bytes_per_token"] == engine.batch.kv.size.per_token < 46080 / 3
        assert tokens_of(ask(engine, "Name a color of the sky.", max_tokens=4))[1].reason in ("stop", "length")
        # The KV room is what the weights leave of the budget.
        assert host.kv_ledger.room() == 2 * 10**9 - host.memory_used()
    finally:
        host.stop()
