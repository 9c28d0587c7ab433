"""Prompt lookup speculation (IMPETUS_SPECULATIVE=ngram): the same tokens as
without it, for the real default model; drafts taken from the sequence."""

from __future__ import annotations

import time

import mlx.core as mx
import pytest
from mlx_lm.models.cache import make_prompt_cache

from impetus.engine.engine import Engine
from impetus.engine.request import SamplingParams
from impetus.engine.spec_cache import SpecBatchCache
from impetus.engine.speculative import DraftLength, NgramIndex, Payoff
from impetus.engine.structured import json_schema_grammar
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


_ALONE: dict = {}


def alone(off, text: str, max_tokens: int) -> dict:
    """The engine without speculation's greedy answer to `text`, cut to
    `max_tokens`: decoded once per text, as long as any test asks, with its
    log-probabilities (greedy tokens do not depend on where the answer is
    cut; the module's reference decodes cost ~25 s of the suite before)."""
    have = _ALONE.get(text)
    if have is None or (len(have["tokens"]) < max_tokens and have["finish"].reason == "length"):
        _ALONE[text] = have = run(off, text, max_tokens=max_tokens, logprobs=True)
    n = min(max_tokens, len(have["tokens"]))
    whole = n == len(have["tokens"])
    return {"tokens": have["tokens"][:n], "logprobs": have["logprobs"][:n], "completion_tokens": n,
            "reason": have["finish"].reason if whole else "length", "text": have["text"] if whole else None}


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
        got, expected = run(on, text, **params), alone(off, text, params.get("max_tokens", 200))
        if params.get("stop"):  # where the stop string falls, the reference stops too
            assert "running -= " not in got["text"]
            cut = next((i for i in range(len(expected["tokens"]) + 1)
                        if "running -= " in on.tokenizer.decode(expected["tokens"][:i])), None)
            if cut is not None:
                expected = {**alone(off, text, cut - 1), "reason": "stop", "text": None}
        assert got["tokens"] == expected["tokens"], (text[:30], params)
        assert expected["text"] is None or got["text"] == expected["text"]
        assert got["finish"].reason == expected["reason"]
        assert got["finish"].completion_tokens == expected["completion_tokens"]
        if params.get("logprobs"):
            assert got["logprobs"] == pytest.approx(expected["logprobs"], abs=1e-3)
    after = on.snapshot()
    assert after["spec_accepted_tokens"] - before["spec_accepted_tokens"] > 100  # the file was guessed
    assert after["spec_steps"] - before["spec_steps"] < (after["generated_tokens"] - before["generated_tokens"]) / 2


@pytest.mark.slow
def test_a_follow_up_turn_starts_from_exactly_the_tokens_sent(engines):
    """The prefix cache gets the accepted tokens' KV and no rejected guess:
    the next turn, from that cache, says what it says without speculation."""
    results = {}
    for mode, engine in engines.items():
        first = run(engine, EDITING, max_tokens=64)
        history = [{"role": "user", "content": EDITING}, {"role": "assistant", "content": first["text"]}]
        second = run(engine, "Now rename the function to rolling_mean.", history=history, max_tokens=40)
        assert second["finish"].cached_tokens > first["finish"].prompt_tokens
        results[mode] = (first["tokens"], second["tokens"])
    assert results["ngram"] == results["off"]


@pytest.mark.slow
def test_company_sends_a_speculating_request_back_into_the_batch(engines):
    off, on = engines["off"], engines["ngram"]
    expected = [alone(off, EDITING, 150)["tokens"], run(off, "Name three rivers.", max_tokens=30)["tokens"]]
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
def test_seeds_and_grammars_stay_in_the_batch_and_penalties_guess(engines):
    """A seeded sampling request and one held to a grammar decode in mlx-lm's
    batch; penalties and `logit_bias` see each guessed position with the
    tokens before it, and the tokens are the same as without speculation."""
    off, on = engines["off"], engines["ngram"]
    before = on.snapshot()["spec_steps"]
    run(on, EDITING, temperature=0.7, seed=3, max_tokens=30)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    run(on, "Give me JSON.", grammar=json_schema_grammar(schema), max_tokens=20)
    assert on.snapshot()["spec_steps"] == before
    bias = {on.tokenizer.encode(" running")[0]: -5.0}
    for params in ({"presence_penalty": 0.5}, {"frequency_penalty": 0.3, "logit_bias": bias}):
        middle = on.snapshot()
        assert run(on, EDITING, max_tokens=48, **params)["tokens"] == run(off, EDITING, max_tokens=48, **params)["tokens"]
        assert on.snapshot()["spec_accepted_tokens"] > middle["spec_accepted_tokens"], params


@pytest.mark.slow
def test_a_request_with_nothing_to_copy_goes_back_to_the_batch(engines):
    """Too few guesses accepted: it decodes in the batch (mlx-lm overlaps
    its steps there) for 16 tokens, then 32, then 64 (`Payoff`)."""
    on = engines["ngram"]
    before = on.snapshot()
    story = run(on, "Write a short story about a dragon who paints.", max_tokens=100)
    after = on.snapshot()
    steps = after["spec_steps"] - before["spec_steps"]
    accepted = after["spec_accepted_tokens"] - before["spec_accepted_tokens"]
    assert len(story["tokens"]) == 100
    proposed = after["spec_proposed_tokens"] - before["spec_proposed_tokens"]
    # Eight guesses to learn there is nothing to copy, then one a pause.
    assert accepted <= proposed <= 16, (accepted, proposed)
    # Pauses of 32 tokens and more are spent in mlx-lm's batch.
    assert steps < 50, steps


def test_guessing_pauses_when_it_does_not_pay_and_longer_each_time():
    payoff = Payoff()
    assert payoff.update(0, 0) == 0  # nothing proposed: nothing learned
    # No pause before 8 guesses; then 16 tokens, 32, ... at most 256.
    assert [payoff.update(4, 0) for _ in range(7)] == [0, 16, 32, 64, 128, 256, 256]
    for _ in range(10):
        assert payoff.update(8, 7) == 0  # copying now: most guesses taken
    # The pauses start over at 16, once its recent steps fall below one guess taken.
    assert [payoff.update(4, 0) for _ in range(6)] == [0, 0, 0, 0, 0, 16]
    copier = Payoff()
    for _ in range(10):
        copier.update(8, 8)
    # A run of misses where a copy departs from its source: no pause while
    # most of its guesses so far were taken.
    assert not any(copier.update(4, 0) for _ in range(10))


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


def test_rows_with_holes_compute_what_each_row_alone_computes(loaded_model):
    """SpecBatchCache: three rows of different lengths decode together, each
    keeping a different number of the positions it wrote (the rest become
    holes); every row's next logits match the same tokens decoded alone, also
    after compaction, after a row leaves, and in the extracted row caches."""
    model = loaded_model.model
    prompts = [list(range(100, 140)), list(range(300, 317)), list(range(500, 563))]

    def alone(tokens):
        cache = make_prompt_cache(model)
        return model(mx.array([tokens]), cache=cache)[0, -1]

    rows = []
    for prompt in prompts:
        cache = make_prompt_cache(model)
        model(mx.array([prompt[:-1]]), cache=cache)
        rows.append(cache)
    batch = SpecBatchCache.merge(rows)
    sequences = [list(p) for p in prompts]  # tokens whose KV is in the cache, plus the last one
    steps = [[3, 1, 2], [1, 4, 4], [2, 2, 1], [4, 1, 3]]
    for step, kept in enumerate(steps):
        width = 4
        inputs = [[seq[-1], *(7 + step + j + 40 * i for j in range(width - 1))] for i, seq in enumerate(sequences)]
        logits = model(mx.array(inputs), cache=batch.layers)
        for i, seq in enumerate(sequences):
            for position in range(kept[i]):  # the positions kept are computed right
                expected = alone(seq + inputs[i][1:position + 1])
                assert mx.allclose(logits[i, position], expected, atol=1e-3).item(), (step, i, position)
        batch.keep(kept, width)
        for i, seq in enumerate(sequences):
            seq += inputs[i][1:kept[i]] + [inputs[i][kept[i] - 1] + 1000]  # the "model's own" next token
    assert batch.valid.sum(axis=1).tolist() == [len(seq) - 1 for seq in sequences]
    assert not batch.valid.all()  # holes are there
    batch.compact()
    assert batch.valid.sum(axis=1).tolist() == [len(seq) - 1 for seq in sequences]
    batch.remove([1])
    del sequences[1]
    logits = model(mx.array([[seq[-1]] for seq in sequences]), cache=batch.layers)
    batch.keep([1, 1], 1)
    for i, seq in enumerate(sequences):
        assert mx.allclose(logits[i, 0], alone(seq), atol=1e-3).item()
        extracted = batch.extract(i)
        assert extracted[0].offset == len(seq)
        extracted_logits = model(mx.array([[5]]), cache=extracted)[0, -1]
        assert mx.allclose(extracted_logits, alone(seq + [5]), atol=1e-3).item()


@pytest.mark.slow
def test_a_batch_of_mixed_requests_speculates_with_the_same_tokens(engines):
    """Requests running together speculate together, each with its own
    guesses (an editing one many, a story few, one with a penalty checked
    per position); one held to a JSON schema (as a forced tool call is)
    rides along without guesses; n=2 is two rows of one prompt. All as
    without speculation, token for token."""
    off, on = engines["off"], engines["ngram"]
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "rivers": {
        "type": "array", "items": {"type": "string"}}}, "required": ["name", "rivers"]}
    cases = [
        (EDITING, {"max_tokens": 80}),
        (EDITING, {"max_tokens": 80}),  # n=2: the same prompt twice
        ("Write a short story about a lighthouse keeper.", {"max_tokens": 60}),
        (EDITING, {"max_tokens": 50, "presence_penalty": 0.5}),
        ("Name a country and three of its rivers, as JSON.", {"max_tokens": 40,
                                                              "grammar": json_schema_grammar(schema)}),
    ]

    def together(engine):
        handles = []
        for text, params in cases:
            prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                          add_generation_prompt=True)
            handles.append(engine.submit(prompt, SamplingParams(temperature=0, **params), ThreadWaiter()))
        return [[event.token for event in handle.events(timeout=300) if hasattr(event, "token")]
                for handle in handles]

    before = on.snapshot()
    expected, got = together(off), together(on)
    after = on.snapshot()
    assert got == expected
    assert after["spec_accepted_tokens"] - before["spec_accepted_tokens"] > 50
    # More than one row a step: fewer speculative steps than the editing rows' tokens.
    assert 0 < after["spec_steps"] - before["spec_steps"] < 80
    assert after["errors"] == before["errors"] and not on.snapshot()["running"]


def _two_token_counts(verdict, draws: int, seed: int) -> dict:
    """Sample two tokens at a time from a fixed bigram "model" over six
    tokens (temperature 0.8, top_k 4), with guesses checked by `verdict`,
    or none (`verdict` None: plain sampling, one token a step)."""
    import numpy as np

    from impetus.engine.sampling import make_distribution

    table = mx.array(np.random.default_rng(7).normal(0, 1.5, (6, 6)).astype(np.float32))
    distribution = make_distribution(SamplingParams(max_tokens=2, temperature=0.8, top_k=4))
    mx.random.seed(seed)
    counts: dict = {}
    for _ in range(draws):
        tokens, last = [], 0
        while len(tokens) < 2:
            draft = [] if verdict is None else [int(mx.argmax(table[last]).item()), 3][:2 - len(tokens)]
            contexts = [last, *draft]
            logprobs = table[mx.array(contexts)]
            logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
            if verdict is None:
                accepted, token = 0, int(mx.random.categorical(distribution(logprobs)[:1]).item())
            else:
                accepted, token = verdict(distribution(logprobs), draft)
            tokens += [*draft[:accepted], token]
            last = token
        counts[tuple(tokens[:2])] = counts.get(tuple(tokens[:2]), 0) + 1
    return counts


def _chi_square_same(a: dict, b: dict) -> tuple[float, float]:
    """The two-sample chi-square statistic (equal sample sizes) and its
    critical value at p = 0.001 (Wilson-Hilferty)."""
    cells = set(a) | set(b)
    statistic = sum((a.get(c, 0) - b.get(c, 0)) ** 2 / (a.get(c, 0) + b.get(c, 0)) for c in cells)
    df = len(cells) - 1
    critical = df * (1 - 2 / (9 * df) + 3.09 * (2 / (9 * df)) ** 0.5) ** 3
    return statistic, critical


def test_speculative_sampling_keeps_the_distribution():
    """sampled_verdict's rule, against plain sampling of the same bigram
    model: the same distribution of two-token outputs (chi-square, p = 0.001,
    3,000 draws each); a rule that keeps every guess is told apart."""
    from impetus.engine.speculative import sampled_verdict

    plain = _two_token_counts(None, 3000, seed=1)
    speculative = _two_token_counts(sampled_verdict, 3000, seed=2)
    statistic, critical = _chi_square_same(plain, speculative)
    assert statistic < critical, (statistic, critical)

    def keep_every_guess(distribution, draft):
        accepted, token = sampled_verdict(distribution, draft)
        return (len(draft), token) if accepted < len(draft) else (accepted, token)

    greedy_guesses = _two_token_counts(keep_every_guess, 3000, seed=3)
    statistic, critical = _chi_square_same(plain, greedy_guesses)
    assert statistic > critical, (statistic, critical)


@pytest.fixture(scope="module")
def random_draft(loaded_model, tmp_path_factory):
    """A tiny random-weight llama (2 layers, 64 wide) with the default
    model's tokenizer: a draft whose guesses are nearly all wrong."""
    import json
    import shutil

    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from impetus.models.loader import load

    folder = tmp_path_factory.mktemp("draft") / "tiny-draft"
    folder.mkdir()
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
              "vocab_size": 49152, "rope_theta": 10000.0, "tie_word_embeddings": True,
              "max_position_embeddings": 8192, "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config))
    mx.random.seed(11)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(loaded_model.path / name, folder / name)
    return load(folder, weights_dtype="float32")


@pytest.mark.slow
def test_a_draft_model_guesses_and_the_output_stays_the_same(engines, loaded_model, random_draft, settings):
    """IMPETUS_SPECULATIVE=draft: with the model itself as its draft nearly
    every guess is taken (its cache rows follow the target's); with a random
    draft nearly none is; the tokens are the same either way, alone and in a
    batch, greedy and (the checks) with logprobs."""
    off = engines["off"]
    expected = [alone(off, EDITING, 40)["tokens"], alone(off, "Write a short story about a lighthouse keeper.", 24)["tokens"]]
    rates = {}
    for name, draft in (("self", loaded_model), ("random", random_draft)):
        engine = Engine(loaded_model, settings.model_copy(update={"speculative": "draft"}), draft=draft)
        engine.start()
        try:
            assert run(engine, EDITING, max_tokens=40)["tokens"] == expected[0]
            handles = []
            for text, limit in ((EDITING, 40), ("Write a short story about a lighthouse keeper.", 24)):
                prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                              add_generation_prompt=True)
                handles.append(engine.submit(prompt, SamplingParams(temperature=0, max_tokens=limit), ThreadWaiter()))
            together = [[e.token for e in h.events(timeout=300) if hasattr(e, "token")] for h in handles]
            assert together == expected
            snapshot = engine.snapshot()
            assert snapshot["speculative"] == "draft" and snapshot["errors"] == 0
            rates[name] = snapshot["spec_acceptance_rate"]
        finally:
            engine.stop()
    assert rates["self"] > 0.9 and rates["random"] < 0.2, rates


def test_a_dropped_batch_cache_frees_its_buffers_at_once(loaded_model):
    """No reference cycle between the batch cache and its layers: the KV
    buffers go when the engine lets go of it, not at Python's next cycle
    collection (a 16-stream cancel test saw 13 MiB outlive its requests)."""
    import gc

    model = loaded_model.model
    rows = []
    for length in (300, 500):
        cache = make_prompt_cache(model)
        model(mx.array([list(range(1, length))]), cache=cache)
        rows.append(cache)
    batch = SpecBatchCache.merge(rows)
    del rows, cache
    mx.eval([(layer.keys, layer.values) for layer in batch.layers])
    gc.collect()
    held = mx.get_active_memory()
    size = sum(layer.keys.nbytes + layer.values.nbytes for layer in batch.layers)
    gc.disable()
    try:
        del batch
        assert mx.get_active_memory() <= held - size
    finally:
        gc.enable()
