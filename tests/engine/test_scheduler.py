"""The scheduler inside the real engine (the default model, no HTTP): fair
admission between keys, pausing a key over its share, priority, and a
prefix shared by requests in flight computed once. Assertions are on the
engine's own counters and step numbers, never on wall time."""

from __future__ import annotations

import time

import pytest

from impetus.engine.engine import Engine
from impetus.engine.request import BATCH, SamplingParams, Tenant
from impetus.engine.scheduler import Scheduler
from impetus.engine.waiters import ThreadWaiter

from engine_events import tokens_of

pytestmark = pytest.mark.slow

A = Tenant("a", "key-a")
B = Tenant("b", "key-b")
NIGHTLY = Tenant("n", "nightly", priority=BATCH)


@pytest.fixture(scope="module")
def engine(loaded_model, settings):
    # A small batch, so that one key fills it with a few requests.
    engine = Engine(loaded_model, settings.model_copy(update={"max_batch_size": 4, "max_queue": 32}))
    engine.start()
    yield engine
    engine.stop()


def prompt_of(engine, text: str) -> list[int]:
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)


def submit(engine, text, tenant=A, max_tokens=24, priority=None, prompt=None):
    return engine.submit(prompt or prompt_of(engine, text), SamplingParams(max_tokens=max_tokens, temperature=0),
                         ThreadWaiter(), tenant=tenant, priority=priority)


def wait_until(condition, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_second_key_gets_a_slot_within_one_step_of_a_flood(engine):
    flood_text = [f"Write a long poem about the number {i}." for i in range(10)]
    alone = [tokens_of(submit(engine, t, max_tokens=40))[0] for t in flood_text[:2]]
    b_alone = [tokens_of(submit(engine, f"Say hi {i}.", tenant=B, max_tokens=4))[0] for i in range(2)]
    early = engine.stats.first_tokens_now
    preempted = engine.stats.preempted
    flood = [submit(engine, t, max_tokens=40) for t in flood_text]
    wait_until(lambda: engine.stats.running == engine.max_batch_size)
    wait_until(lambda: any(h.outbox for h in flood))  # decoding: requests can be paused
    # B's first request takes the spare slot; the second needs one of A's: A's latest is paused.
    shorts = [submit(engine, f"Say hi {i}.", tenant=B, max_tokens=4) for i in range(2)]
    b_flood = []
    for short in shorts:
        short_tokens, finish = tokens_of(short)
        assert finish.reason in ("stop", "length") and short_tokens
        b_flood.append(short_tokens)
        # B did not wait for A's answers to end.
        assert short.admitted_step - short.queued_step <= 1
    assert engine.stats.preempted > preempted
    # B's first request, its key's only one beside A's work, got its first token before joining
    # the batch; the answers are the same as alone.
    assert engine.stats.first_tokens_now > early
    assert b_flood == b_alone
    short = shorts[-1]
    results = [tokens_of(h) for h in flood]
    assert all(f.reason == "length" for _, f in results)
    # A paused request resumes where it was: greedy output is unchanged.
    assert [t for t, _ in results[:2]] == alone
    assert max(h.admitted_step for h in flood) > short.admitted_step  # A's queue waited behind B


def test_a_paused_request_resumes_with_its_own_answer(engine):
    """Each of a flood gives its answer alone, the paused one too: it was
    speculating (four greedy requests), went back into mlx-lm's batch for
    B's, was paused, resumed, and speculated again. Taken out again for
    speculation before the batch had stepped it (its cache still without its
    last token), it lost a token and answered something else from there."""
    texts = [f"Tell a long story number {i}." for i in range(1, 5)]
    alone = [tokens_of(submit(engine, t, max_tokens=30))[0] for t in texts]
    flood = [submit(engine, t, max_tokens=30) for t in texts]
    wait_until(lambda: all(h.outbox for h in flood))
    preempted = engine.stats.preempted
    others = [submit(engine, f"Say hi {i}.", tenant=B, max_tokens=8) for i in range(2)]
    assert [tokens_of(h)[0] for h in flood] == alone
    for handle in others:
        tokens_of(handle)
    assert engine.stats.preempted > preempted and engine.stats.spec_steps > 0


def test_batch_priority_yields_to_interactive_and_cannot_be_raised(engine):
    clamped = submit(engine, "Hello", tenant=NIGHTLY, max_tokens=1, priority=0)
    assert clamped.priority == BATCH  # a batch key cannot ask for interactive
    tokens_of(clamped)
    nightly = [submit(engine, f"Describe city number {i} at length.", tenant=NIGHTLY, max_tokens=300)
               for i in range(6)]
    wait_until(lambda: any(h.outbox for h in nightly))
    wait_until(lambda: engine.stats.running == engine.max_batch_size)
    # The first takes the spare slot, the second pauses a batch request.
    interactive = [submit(engine, f"Name a colour {i}.", tenant=A, max_tokens=4) for i in range(2)]
    for handle in interactive:
        tokens_of(handle)
        assert handle.admitted_step - handle.queued_step <= 1
    waited = [h for h in nightly if h.admitted_step < 0 or h.admitted_step > interactive[0].admitted_step]
    assert waited, "the waiting batch work goes after the interactive requests"
    for handle in nightly:
        handle.cancel()
        assert tokens_of(handle)[1].reason in ("cancelled", "length")


def test_cancel_a_paused_request_frees_its_slot_and_cache(engine):
    flood = [submit(engine, f"Tell a long story number {i}.", max_tokens=200) for i in range(4)]
    wait_until(lambda: all(h.outbox for h in flood))
    others = [submit(engine, f"Say something long {i}.", tenant=B, max_tokens=100) for i in range(2)]
    wait_until(lambda: engine.batch.paused)
    paused = next(iter(engine.batch.paused))
    paused.cancel()
    _, finish = tokens_of(paused)
    assert finish.reason == "cancelled" and finish.completion_tokens >= 1
    assert paused not in engine.batch.paused
    for handle in flood + others:
        if handle is not paused:
            handle.cancel()
            tokens_of(handle)
    wait_until(lambda: engine.in_flight == 0 and engine.stats.running == 0 and not engine.batch.paused)


def test_a_prefix_shared_by_requests_in_flight_is_prefilled_once(engine):
    system = " ".join(f"Rule {i}: answer in the voice of a polite lighthouse keeper number {i * 7}."
                      for i in range(40))
    questions = ["What is two plus two?", "Name a fruit.", "Which planet is red?", "What do bees make?"]

    def prompt(question):
        return engine.tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": question}],
            add_generation_prompt=True)

    prompts = [prompt(q) for q in questions]
    shared = next(i for i in range(len(prompts[0])) if prompts[0][i] != prompts[1][i])
    assert shared > 4 * engine.batch.prefill_step
    before = engine.snapshot()
    handles = [submit(engine, "", prompt=p, tenant=[A, B][i % 2], max_tokens=12) for i, p in enumerate(prompts)]
    together = [tokens_of(h)[0] for h in handles]
    after = engine.snapshot()
    prefilled = after["prefilled_tokens"] - before["prefilled_tokens"]
    suffixes = sum(len(p) - shared for p in prompts)
    # The shared part was computed once (give or take a few tokens at the boundary).
    assert prefilled < shared + suffixes + 8 * len(prompts), (prefilled, shared, suffixes)
    assert after["shared_prefixes"] > before["shared_prefixes"]

    # Each answer is its solo answer, computed without any cache: the first of each key's
    # (the other two are the same case again, at ~5 s of prefill each).
    engine.batch.prefixes.ram.trim_to(n_sequences=0)
    solo = []
    for p in prompts[:2]:
        solo.append(tokens_of(submit(engine, "", prompt=p, max_tokens=12))[0])
        engine.batch.prefixes.ram.trim_to(n_sequences=0)
    assert together[:2] == solo


def test_fifo_is_arrival_order_and_fair_order_interleaves_keys():
    def handle(tenant):
        class H:  # only what the scheduler reads
            pass

        h = H()
        h.tenant, h.priority, h.admitted_at, h.prompt_tokens = tenant, tenant.priority, None, [1, 2, 3]
        return h

    for fair in (False, True):
        scheduler = Scheduler(slots=4, fair=fair)
        flood = [handle(A) for _ in range(6)]
        for h in flood:
            scheduler.add(h)
        late = handle(B)
        scheduler.add(late)
        order = scheduler.order()
        assert order.index(late) == (6 if not fair else 1)
        scheduler.running.update({"a": 4})
        # The batch is full of A: fair pauses one of A's for B, FIFO never pauses.
        victim = scheduler.victim(late, flood[:4])
        assert (victim in flood[:4]) if fair else victim is None
