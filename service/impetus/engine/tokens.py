"""One token of one request, turned into what its client reads.

`emit` detokenizes the token, looks for the request's stop strings (holding
back as many characters as the longest one could still need), adds the
log-probabilities it asked for and pushes a `TokenEvent` to its handle; it
says whether the text ended. It decides nothing about the batch, the cache
or the scheduler: the batch (`impetus.engine.batch`) does those.
"""

from __future__ import annotations

import copy
import math

import mlx.core as mx
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

from impetus.engine.request import TokenEvent
from impetus.engine.running import Running


def _finite(logprob: float) -> float:
    """JSON has no -Infinity or NaN: an impossible token reads -9999.0, as OpenAI reports it."""
    return logprob if math.isfinite(logprob) else -9999.0


class ExactBPEDetokenizer(BPEStreamingDetokenizer):
    """mlx-lm's byte-level BPE detokenizer drops the first leading space (an
    SPM habit); a completion of "The capital of France is" must keep " Paris"."""

    def _maybe_trim_space(self, current_text):
        return current_text


def make_detokenizer_factory(tokenizer):
    template = tokenizer.detokenizer
    if type(template) is BPEStreamingDetokenizer:
        template = ExactBPEDetokenizer(tokenizer._tokenizer)

    def new_detokenizer():
        detokenizer = copy.copy(template)
        detokenizer.reset()
        return detokenizer

    return new_detokenizer


def emit(response, state: Running) -> str | None:
    """Send `response.token` of `state`'s request; its finish reason (the
    generator's, or "stop" for a stop string), None while it goes on."""
    finish = response.finish_reason
    # An end-of-sequence token ends the text; it is not part of it.
    if finish != "stop":
        state.detokenizer.add_token(response.token)
    if finish is not None:
        state.detokenizer.finalize()
    state.pending_text += state.detokenizer.last_segment

    for stop in state.stops:
        index = state.pending_text.find(stop)
        if index >= 0:
            state.pending_text = state.pending_text[:index]
            state.stop_string = stop
    if state.stop_string is not None:
        finish = "stop"

    if finish is not None:
        visible, state.pending_text = state.pending_text, ""
    elif state.holdback:
        cut = max(0, len(state.pending_text) - state.holdback)
        visible, state.pending_text = state.pending_text[:cut], state.pending_text[cut:]
    else:
        visible, state.pending_text = state.pending_text, ""

    logprob = top = None
    if state.handle.params.logprobs:
        logprob, top = logprobs_of(response, state.handle.params.top_logprobs)
    state.handle.push(TokenEvent(response.token, visible, logprob, top))
    return finish


def logprobs_of(response, k: int):
    """The chosen token's log-probability and the `k` most likely, best first."""
    logprobs = response.logprobs
    chosen = _finite(logprobs[response.token].item())
    top = None
    if k > 0:
        ids = mx.argpartition(-logprobs, kth=k - 1)[:k]
        values = logprobs[ids]
        order = mx.argsort(-values)
        top = [(token, _finite(value)) for token, value in zip(ids[order].tolist(), values[order].tolist())]
    return chosen, top
