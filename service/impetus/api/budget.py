"""What a request may ask of the model: its output's length within the context,
and its sampling parameters.

`output_budget` grants the tokens an answer may have (clamped to the room
the prompt leaves, or OpenAI's 400 naming the field); `sampling_params`
checks `logit_bias` against the vocabulary and builds the engine's
`SamplingParams`. Every face (chat, completions, Responses, Messages) comes
through here; nothing here talks to the engine or the client.
"""

from __future__ import annotations

from impetus.engine.engine import Engine
from impetus.engine.request import SamplingParams
from impetus.web import APIError, bad_request


def room_after_prompt(engine: Engine, prompt_length: int, param: str) -> int:
    """Tokens the context leaves for the output; a 400 naming `param` when
    the prompt alone fills it."""
    context = engine.loaded.context_length
    if prompt_length >= context:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens. However, your prompt "
            f"has {prompt_length} tokens.",
            param=param,
            code="context_length_exceeded",
        )
    return context - prompt_length


MAX_TOKENS_HEADER = "x-impetus-max-tokens"


def with_defaults(body, settings, defaults=None):
    """The request with defaults filled in where it named none, before
    anything reads it (the response cache keys on the result): first the
    model's (`models.defaults`: SmolLM2's card says temperature 0.2, top_p
    0.9), then the server's temperature, IMPETUS_DEFAULT_TEMPERATURE (1.0, as
    OpenAI and Anthropic have it; coding agents send none). A field the
    client sent, even its API's own default value, is the client's. A schema
    names its fields for the parameters in `sampling_names` (Messages:
    stop_sequences); a parameter it has no field for is left to the chat
    request it becomes, which is filled in the same way."""
    names = getattr(body, "sampling_names", {})
    for key, value in (defaults.values if defaults is not None else {}).items():
        name = names.get(key, key)
        if name in type(body).model_fields and name not in body.model_fields_set:
            setattr(body, name, list(value) if isinstance(value, list) else value)
    if body.temperature is None:
        body.temperature = settings.default_temperature
    return body


def output_budget(resp, engine: Engine, settings, prompt_length: int, requested: int | None,
                  prompt_param: str, max_param: str, overflow: str | None = None) -> int:
    """How many tokens the answer may have: what the request asked for (or
    IMPETUS_DEFAULT_MAX_TOKENS), within the room the context leaves after the
    prompt. Agents ask for far more than a local model's context leaves
    (Claude Code always sends max_tokens 32000; the default model has 8,192
    tokens), so by default (IMPETUS_MAX_TOKENS_OVERFLOW=clamp) an ask beyond
    the room is cut to it, the answer ends with "length" if it runs out, and
    the response header x-impetus-max-tokens says what was granted; "reject"
    answers OpenAI's 400 naming `max_param` instead. A prompt that alone fills
    the context is a 400 naming `prompt_param` either way. With several
    prompts (completions) the header names the tightest grant. `overflow`
    overrides the setting (the Messages API always clamps)."""
    room = room_after_prompt(engine, prompt_length, prompt_param)
    if requested is None:
        return min(settings.default_max_tokens, room)
    if requested <= room:
        return requested
    if (overflow or settings.max_tokens_overflow) == "reject":
        raise APIError(
            400,
            f"This model's maximum context length is {engine.loaded.context_length} tokens. However, you "
            f"requested {prompt_length + requested} tokens ({prompt_length} in the prompt, {requested} "
            f"in the completion). Please reduce the prompt or {max_param}.",
            param=max_param,
            code="context_length_exceeded",
        )
    granted = resp.get_header(MAX_TOKENS_HEADER)
    resp.set_header(MAX_TOKENS_HEADER, str(min(room, int(granted)) if granted else room))
    return room


def sampling_params(body, max_tokens: int, engine: Engine, logprobs: bool, top_logprobs: int) -> SamplingParams:
    vocab = engine.loaded.config.get("vocab_size") or 0
    logit_bias = {}
    for key, value in (body.logit_bias or {}).items():
        token = int(key)
        if not 0 <= token < vocab:
            raise bad_request(f"logit_bias token {token} is outside the vocabulary (0..{vocab - 1}).",
                              param="logit_bias")
        logit_bias[token] = value
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        seed=body.seed,
        stop=list(body.stop),
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=logit_bias,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
