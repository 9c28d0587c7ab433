"""The generation core the protocols share, in-process with the real model:
the heartbeat a stream uses to send Anthropic's pings while a prompt
prefills, and the stop string that ended a generation (Anthropic's
stop_sequence)."""

from __future__ import annotations

import time

import pytest

from impetus.api import generation
from impetus.api.generation import Generation, Queued
from impetus.engine.engine import Engine
from impetus.engine.request import FinishEvent, SamplingParams, TokenEvent
from impetus.engine.waiters import ThreadWaiter
from impetus.gateway.account import Account
from impetus.metrics import Metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(loaded_model, settings):
    engine = Engine(loaded_model, settings)
    engine.start()
    yield engine
    engine.stop()


def start(engine, text: str, **params) -> Generation:
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return Generation(engine, ThreadWaiter(), [prompt], [SamplingParams(**params)], env={},
                      prompt_tokens=len(prompt), account=Account("127.0.0.1"), metrics=Metrics.null())


def run(engine, text: str, heartbeat=None, **params) -> list:
    gen = start(engine, text, **params)
    try:
        return [event for _, event in gen.events(heartbeat=heartbeat)]
    finally:
        gen.close()


def test_a_waiting_stream_hears_its_queue_position(loaded_model, settings, monkeypatch):
    monkeypatch.setattr(generation, "QUEUE_NOTE_S", 0.05)
    single = Engine(loaded_model, settings.model_copy(update={"max_batch_size": 1, "max_queue": 4}))
    single.start()
    try:
        first = start(single, "Write a long story about a lighthouse.", max_tokens=60, temperature=0)
        while first.handles[0].admitted_at is None:
            time.sleep(0.01)
        second = start(single, "Hi", max_tokens=2, temperature=0)
        events = [event for _, event in second.events()]
        first.collect()
    finally:
        single.stop()
    notes = [e for e in events if isinstance(e, Queued)]
    tokens = [i for i, e in enumerate(events) if isinstance(e, TokenEvent)]
    assert notes and notes[0].position == 1 and notes[0].comment().startswith("queued position=1")
    assert max(i for i, e in enumerate(events) if isinstance(e, Queued)) < tokens[0]  # only while it waits
    assert second.queue_seconds > 0 and second.handles[0].admitted_step > second.handles[0].queued_step


def test_heartbeats_come_while_a_long_prompt_prefills(engine):
    filler = "The harbour committee met to review the budget, the roads and the market. " * 40  # ~640 tokens
    events = run(engine, filler + "Summarize.", heartbeat=0.05, max_tokens=3, temperature=0)
    first_token = next(i for i, e in enumerate(events) if isinstance(e, TokenEvent))
    assert events[:first_token] and all(e is None for e in events[:first_token])  # prefill takes seconds here
    assert isinstance(events[-1], FinishEvent) and events[-1].completion_tokens == 3
    # Without a heartbeat nothing but the generation's own events.
    assert None not in run(engine, "Hi", max_tokens=2, temperature=0)


def test_the_stop_string_that_ended_it_is_named(engine):
    events = run(engine, "Count from 1 to 20, one number per line.", max_tokens=80, temperature=0, stop=["7", "zzz"])
    assert events[-1].reason == "stop" and events[-1].stop_string == "7"
    ended = run(engine, "Say hi.", max_tokens=2, temperature=0, stop=["zzz"])
    assert ended[-1].stop_string is None
