"""The engine thread with the real default model, without HTTP."""

from __future__ import annotations

import time

import pytest

from impetus.engine.engine import Engine, QueueFull
from impetus.engine.request import FinishEvent, SamplingParams, TokenEvent
from impetus.engine.waiters import ThreadWaiter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(loaded_model, settings):
    engine = Engine(loaded_model, settings.model_copy(update={"max_queue": 4}))
    engine.start()
    yield engine
    engine.stop()


def chat(engine, text: str, **params):
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    params.setdefault("temperature", 0)
    params.setdefault("max_tokens", 24)
    return engine.submit(prompt, SamplingParams(**params), ThreadWaiter())


def collect(handle) -> tuple[str, list[int], FinishEvent]:
    text, tokens = "", []
    for event in handle.events(timeout=120):
        if isinstance(event, TokenEvent):
            text += event.text
            tokens.append(event.token)
        else:
            return text + event.text, tokens, event
    raise AssertionError("no finish event")


def test_greedy_output_is_the_same_alone_and_in_a_batch(engine):
    questions = [f"Give me one fact about the number {i}." for i in range(8)]
    alone = [collect(chat(engine, q))[1] for q in questions[:3]]
    handles = [chat(engine, q) for q in questions]
    batched = [collect(h)[1] for h in handles]
    assert batched[:3] == alone
    assert len({tuple(t) for t in batched}) > 1  # independent outputs


def test_follow_up_turn_reuses_the_cached_prefix(engine):
    first = "Tell me about the moon in one sentence."
    text, _, finish = collect(chat(engine, first))
    assert finish.cached_tokens < finish.prompt_tokens
    messages = [{"role": "user", "content": first}, {"role": "assistant", "content": text},
                {"role": "user", "content": "And the sun?"}]
    prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    _, _, follow_up = collect(engine.submit(prompt, SamplingParams(max_tokens=8, temperature=0), ThreadWaiter()))
    # Everything up to the new user turn was prefilled already.
    assert follow_up.cached_tokens >= finish.prompt_tokens


def test_stop_string_ends_generation_and_is_not_returned(engine):
    text, _, finish = collect(chat(engine, "Count from 1 to 20, one number per line.", stop=["7"], max_tokens=80))
    assert finish.reason == "stop"
    assert "7" not in text and "6" in text


def test_max_tokens_gives_length(engine):
    _, tokens, finish = collect(chat(engine, "Write a long story about a dragon.", max_tokens=5))
    assert finish.reason == "length"
    assert len(tokens) == finish.completion_tokens == 5


def test_seeded_sampling_is_reproducible(engine):
    runs = [collect(chat(engine, "Invent a name for a cat.", temperature=1.0, seed=42))[1] for _ in range(2)]
    other = collect(chat(engine, "Invent a name for a cat.", temperature=1.0, seed=7))[1]
    assert runs[0] == runs[1]
    assert other != runs[0]


def test_logprobs_are_reported_per_token(engine):
    _, tokens, _ = collect(chat(engine, "Say yes.", max_tokens=4, logprobs=True, top_logprobs=3))
    handle = chat(engine, "Say yes.", max_tokens=4, logprobs=True, top_logprobs=3)
    events = [e for e in handle.events(timeout=60) if isinstance(e, TokenEvent)]
    for event in events:
        assert event.logprob <= 0
        assert len(event.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert event.top_logprobs[0][0] == event.token


def test_cancel_frees_the_batch_slot(engine):
    handle = chat(engine, "Write a very long essay about rivers.", max_tokens=500)
    deadline = time.monotonic() + 60
    while engine.stats.running == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats.running == 1
    cancelled_before = engine.stats.cancelled
    handle.cancel()
    _, tokens, finish = collect(handle)
    assert finish.reason == "cancelled"
    assert len(tokens) < 500
    while engine.stats.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats.running == 0
    assert engine.stats.cancelled == cancelled_before + 1


def test_full_queue_refuses_new_work(engine):
    handles = []
    with pytest.raises(QueueFull):
        for _ in range(engine.max_batch_size + engine.max_queue + 1):
            handles.append(chat(engine, "Hello", max_tokens=64))
    assert len(handles) == engine.max_batch_size + engine.max_queue
    for handle in handles:
        handle.cancel()
    for handle in handles:
        collect(handle)


def test_logit_bias_bans_and_forces_tokens(engine):
    _, greedy_tokens, _ = collect(chat(engine, "What is the capital of France?", max_tokens=6))
    _, banned, _ = collect(chat(engine, "What is the capital of France?", max_tokens=6,
                                logit_bias={greedy_tokens[0]: -100.0}))
    assert banned[0] != greedy_tokens[0]
    forced_token = engine.tokenizer.encode(" banana")[0]
    _, forced, _ = collect(chat(engine, "What is the capital of France?", max_tokens=4,
                                logit_bias={forced_token: 100.0}))
    assert forced == [forced_token] * 4


def test_top_k_one_is_greedy_even_when_sampling(engine):
    _, greedy_tokens, _ = collect(chat(engine, "Name three colors.", max_tokens=12))
    _, top1, _ = collect(chat(engine, "Name three colors.", max_tokens=12, temperature=1.5, top_k=1, seed=9))
    assert top1 == greedy_tokens


def test_repetition_penalty_reduces_repeats(engine):
    prompt = "Repeat the word hello twenty times."
    _, plain, _ = collect(chat(engine, prompt, max_tokens=30))
    _, penalised, _ = collect(chat(engine, prompt, max_tokens=30, repetition_penalty=2.0))
    assert len(set(penalised)) > len(set(plain))


def test_a_request_with_odd_sampling_does_not_fail_its_batch(engine):
    """Found by schemathesis: top_k past the vocabulary made mlx-lm's sampler
    raise inside the batch step, which failed every request in that batch."""
    neighbour = chat(engine, "Count to ten.", max_tokens=12, temperature=0)
    odd = chat(engine, "Hi", max_tokens=6, temperature=1.0, top_k=10 * engine.tokenizer.vocab_size, seed=1)
    _, tokens, finish = collect(odd)
    assert finish.reason == "length" and len(tokens) == 6
    _, tokens, finish = collect(neighbour)
    assert finish.reason == "length" and len(tokens) == 12


@pytest.mark.parametrize("seed", [-1, 2**70])
def test_any_integer_is_a_seed(engine, seed):
    """Found by schemathesis: a negative seed failed MLX's key()."""
    runs = [collect(chat(engine, "Pick a word.", max_tokens=5, temperature=1.0, seed=seed))[1] for _ in range(2)]
    assert len(runs[0]) == 5 and runs[0] == runs[1]


def test_finished_requests_hold_no_more_memory_than_the_prefix_cache_counts(engine):
    import gc

    import mlx.core as mx

    gc.collect()
    before, counted_before = mx.get_active_memory(), engine.batch.prefixes.nbytes
    filler = "The harbour committee met to review the budget, the roads and the market. " * 12
    handles = [chat(engine, f"{i}: {filler} Summarize.", max_tokens=8, temperature=0.7) for i in range(12)]
    for handle in handles:
        assert collect(handle)[2].reason in ("stop", "length")
    gc.collect()
    grown = mx.get_active_memory() - before
    counted = engine.batch.prefixes.nbytes - counted_before
    # What the prefix cache keeps is all that stays: no batch KV buffers held
    # through lazy slices (those were ~10x what the cache counted).
    assert counted > 0
    assert grown <= counted + 32 * 2**20, (grown, counted)
