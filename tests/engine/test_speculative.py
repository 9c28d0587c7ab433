"""Prompt lookup speculation (IMPETUS_SPECULATIVE=ngram): the same tokens as
without it, for the real default model; drafts taken from the sequence."""

from __future__ import annotations

import time

import pytest

from impetus.engine.engine import Engine
from impetus.engine.request import SamplingParams
from impetus.engine.speculative import DraftLength, NgramIndex
from impetus.engine.waiters import ThreadWaiter

SOURCE = '''def moving_average(values, window):
    """The mean of each run of `window` values."""
    if window <= 0:
        raise ValueError("window must be positive")
    totals, running = [], 0.0
    for index, value in enumerate(values):
        running += value
        if index >= window:
            running -= values[index - window]
        if index >= window - 1:
            totals.append(running / window)
    return totals
'''
EDITING = f"Repeat this text exactly:\n\n{SOURCE}"


def test_a_draft_is_what_followed_the_longest_earlier_match():
    index = NgramIndex()
    index.extend([1, 2, 3, 4, 5, 9, 2, 3])
    assert index.propose(3) == [4, 5, 9]  # "2 3" came before, followed by 4 5 9
    index.extend([7])
    assert index.propose(4) == []  # "7" never came before
    index.extend([1, 2])
    assert index.propose(2) == [3, 4]  # "7 1 2" is new; "1 2" opened the sequence
    assert NgramIndex().propose(4) == [] and index.propose(0) == []


def test_the_latest_occurrence_wins_and_the_suffix_itself_is_not_one():
    index = NgramIndex()
    index.extend([5, 6, 7, 5, 6, 8, 5, 6])
    assert index.propose(1) == [8]  # the later "5 6" was followed by 8
    index = NgramIndex()
    index.extend([4, 4, 4])
    assert index.propose(3) == [4]  # "4 4" ended at 2 before: what followed is the last 4


def test_a_passage_being_copied_is_followed_until_the_sequence_leaves_it():
    index = NgramIndex()
    index.extend([1, 2, 3, 4, 5, 6, 0, 4, 8, 0, 1, 2])
    assert index.propose(2) == [3, 4]
    index.accept([3, 4, 5])  # both guesses taken, and the model's own token continues the passage
    assert index.following == 5
    assert index.propose(2) == [6, 0]  # the passage goes on, without a lookup
    index.accept([6, 7])  # the model left the passage
    assert index.following is None
    assert index.propose(2) == []  # "7" never came before


def test_the_draft_length_grows_on_success_and_shrinks_on_failure():
    length = DraftLength(8)
    assert length.current == 4
    length.update(4, 4)
    assert length.current == 8
    length.update(8, 8)
    assert length.current == 8
    length.update(8, 0)
    length.update(4, 0)
    length.update(2, 0)
    length.update(1, 0)
    assert length.current == 1
    length.update(1, 1)
    assert length.current == 2
    length.update(0, 0)  # nothing to propose: no change
    assert length.current == 2


@pytest.fixture(scope="module")
def engines(loaded_model, settings):
    made = {}
    for mode in ("off", "ngram"):
        made[mode] = Engine(loaded_model, settings.model_copy(update={"speculative": mode}))
        made[mode].start()
    yield made
    for engine in made.values():
        engine.stop()


def run(engine, text: str, history=(), **params):
    messages = [*history, {"role": "user", "content": text}]
    prompt = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    params.setdefault("temperature", 0)
    params.setdefault("max_tokens", 200)
    handle = engine.submit(prompt, SamplingParams(**params), ThreadWaiter())
    tokens, logprobs, text = [], [], ""
    for event in handle.events(timeout=300):
        if hasattr(event, "token"):
            tokens.append(event.token)
            logprobs.append(event.logprob)
            text += event.text
        else:
            return {"tokens": tokens, "text": text + event.text, "finish": event, "logprobs": logprobs}
    raise AssertionError("no finish event")


@pytest.mark.slow
def test_greedy_output_is_token_for_token_the_same(engines):
    off, on = engines["off"], engines["ngram"]
    before = on.snapshot()
    cases = [
        (EDITING, {}),
        ("Write a short story about a lighthouse keeper.", {"max_tokens": 60}),
        (EDITING, {"stop": ["running -= "]}),  # a stop string inside an accepted draft
        (EDITING, {"max_tokens": 37}),  # the limit inside a draft
        (EDITING, {"logprobs": True, "max_tokens": 40}),
    ]
    for text, params in cases:
        expected, got = run(off, text, **params), run(on, text, **params)
        assert got["tokens"] == expected["tokens"], (text[:30], params)
        assert got["text"] == expected["text"]
        assert got["finish"].reason == expected["finish"].reason
        assert got["finish"].completion_tokens == expected["finish"].completion_tokens
        if params.get("logprobs"):
            assert got["logprobs"] == pytest.approx(expected["logprobs"], abs=1e-3)
    after = on.snapshot()
    assert after["spec_accepted_tokens"] - before["spec_accepted_tokens"] > 100  # the file was guessed
    assert after["spec_steps"] - before["spec_steps"] < (after["generated_tokens"] - before["generated_tokens"]) / 2
    assert "running -= " not in run(on, EDITING, stop=["running -= "])["text"]


@pytest.mark.slow
def test_a_follow_up_turn_starts_from_exactly_the_tokens_sent(engines):
    """The prefix cache gets the accepted tokens' KV and no rejected guess:
    the next turn, from that cache, says what it says without speculation."""
    results = {}
    for mode, engine in engines.items():
        first = run(engine, EDITING, max_tokens=90)
        history = [{"role": "user", "content": EDITING}, {"role": "assistant", "content": first["text"]}]
        second = run(engine, "Now rename the function to rolling_mean.", history=history, max_tokens=60)
        assert second["finish"].cached_tokens > first["finish"].prompt_tokens
        results[mode] = (first["tokens"], second["tokens"])
    assert results["ngram"] == results["off"]


@pytest.mark.slow
def test_company_sends_a_speculating_request_back_into_the_batch(engines):
    off, on = engines["off"], engines["ngram"]
    expected = [run(off, EDITING, max_tokens=150)["tokens"], run(off, "Name three rivers.", max_tokens=30)["tokens"]]
    prompt = on.tokenizer.apply_chat_template([{"role": "user", "content": EDITING}], add_generation_prompt=True)
    first = on.submit(prompt, SamplingParams(max_tokens=150, temperature=0), ThreadWaiter())
    events = first.events(timeout=300)
    tokens = [next(events).token for _ in range(20)]  # it is speculating alone by now
    assert on.snapshot()["spec_steps"] > 0
    second = run(on, "Name three rivers.", max_tokens=30)  # joins: both decode in the batch
    for event in events:
        if hasattr(event, "token"):
            tokens.append(event.token)
    assert [tokens, second["tokens"]] == expected


@pytest.mark.slow
def test_cancel_while_speculating_frees_the_slot(engines):
    on = engines["ngram"]
    prompt = on.tokenizer.apply_chat_template([{"role": "user", "content": EDITING}], add_generation_prompt=True)
    handle = on.submit(prompt, SamplingParams(max_tokens=400, temperature=0), ThreadWaiter())
    events = handle.events(timeout=300)
    for _ in range(10):
        next(events)
    handle.cancel()
    deadline = time.monotonic() + 30
    while on.snapshot()["running"] or on.in_flight:
        assert time.monotonic() < deadline, on.snapshot()
        time.sleep(0.05)
    assert run(on, "Name three rivers.", max_tokens=8)["finish"].reason == "length"


@pytest.mark.slow
def test_sampling_and_processors_stay_in_the_batch(engines):
    on = engines["ngram"]
    before = on.snapshot()["spec_steps"]
    run(on, EDITING, temperature=0.7, seed=3, max_tokens=30)
    run(on, EDITING, presence_penalty=0.5, max_tokens=30)
    assert on.snapshot()["spec_steps"] == before


@pytest.mark.slow
def test_a_request_with_nothing_to_copy_goes_back_to_the_batch(engines):
    """Four steps in a row with no guess accepted: it decodes in the batch
    (mlx-lm overlaps its steps there) for the next 48 tokens."""
    on = engines["ngram"]
    before = on.snapshot()
    story = run(on, "Write a short story about a dragon who paints.", max_tokens=100)
    after = on.snapshot()
    steps = after["spec_steps"] - before["spec_steps"]
    accepted = after["spec_accepted_tokens"] - before["spec_accepted_tokens"]
    assert len(story["tokens"]) == 100
    # Off the batch only while it looked worth it: far fewer steps there than tokens.
    assert steps <= accepted + 3 * 4 + 4, (steps, accepted)


@pytest.mark.slow
def test_a_prediction_is_one_more_source_of_guesses(engines):
    """OpenAI's `prediction`: the expected answer, not in the prompt. Given
    the very answer, nearly every guess is taken, and the answer is the same."""
    off, on = engines["off"], engines["ngram"]
    question = "Write a Python function that returns the squares of a list of numbers."
    expected = run(off, question, max_tokens=80)
    before = on.snapshot()
    without = run(on, question, max_tokens=80)
    middle = on.snapshot()
    predicted = run(on, question, max_tokens=80, prediction=expected["tokens"])
    after = on.snapshot()
    assert without["tokens"] == predicted["tokens"] == expected["tokens"]
    gained = after["spec_accepted_tokens"] - middle["spec_accepted_tokens"]
    assert gained > middle["spec_accepted_tokens"] - before["spec_accepted_tokens"]
    assert gained >= 60 and predicted["finish"].accepted_prediction_tokens == gained
