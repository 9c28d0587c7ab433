"""Per-request samplers and logits processors for mlx-lm's BatchGenerator."""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

from impetus.engine.request import SamplingParams

# OpenAI's presence/frequency penalties look at everything generated so far;
# mlx-lm's look at a window. A wide window approximates OpenAI's behaviour.
PENALTY_CONTEXT = 1024


def make_sampler(params: SamplingParams):
    """A sampler for one request, or None for greedy decoding.

    None lets the BatchGenerator sample the whole batch with one argmax when
    every request is greedy. A seeded request owns its PRNG key, so its output
    does not depend on which other requests share the batch.
    """
    if params.temperature == 0:
        return None
    filters = _filters(params)
    inverse_temperature = 1.0 / params.temperature
    # Any integer is a seed (OpenAI takes negative ones too); MLX keys are 64-bit unsigned.
    key = mx.random.key(params.seed % 2**64) if params.seed is not None else None

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        for apply in filters:
            logprobs = apply(logprobs)
        if key is None:
            return mx.random.categorical(logprobs * inverse_temperature)
        key, step_key = mx.random.split(key)
        return mx.random.categorical(logprobs * inverse_temperature, key=step_key)

    return sample


def _filters(params: SamplingParams) -> list:
    filters = []
    if 0 < params.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, params.top_p))
    if params.min_p > 0:
        filters.append(lambda x: apply_min_p(x, params.min_p))
    if params.top_k > 0:
        # top_k at or past the vocabulary keeps every token (mlx-lm's would fail).
        filters.append(lambda x: apply_top_k(x, params.top_k) if params.top_k < x.shape[-1] else x)
    return filters


def make_distribution(params: SamplingParams):
    """The distribution a sampling request draws from, as normalized
    log-probabilities ([positions, vocabulary] in, the same out): the
    sampler's filters and temperature, for speculative sampling's rule."""
    filters = _filters(params)
    inverse_temperature = 1.0 / params.temperature

    def distribution(logprobs: mx.array) -> mx.array:
        for apply in filters:
            logprobs = apply(logprobs)
        tempered = logprobs * inverse_temperature
        return tempered - mx.logsumexp(tempered, axis=-1, keepdims=True)

    return distribution


def make_processors(params: SamplingParams, tokenizer=None) -> list:
    processors = make_logits_processors(
        logit_bias=params.logit_bias or None,
        repetition_penalty=params.repetition_penalty,
        repetition_context_size=PENALTY_CONTEXT,
        presence_penalty=params.presence_penalty or None,
        presence_context_size=PENALTY_CONTEXT,
        frequency_penalty=params.frequency_penalty or None,
        frequency_context_size=PENALTY_CONTEXT,
    )
    if params.grammar is not None:
        # Last: whatever the penalties and biases did, only valid tokens stay.
        from impetus.engine.structured import GrammarProcessor, ll_tokenizer

        processors.append(GrammarProcessor(ll_tokenizer(tokenizer), params.grammar))
    return processors
