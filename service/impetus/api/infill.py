"""POST /infill: llama.cpp's fill-in-the-middle route, for editors' autocomplete
(llama.vim, llama.vscode), over the same core as every other face: the
model's FIM prompt (api.fim), its defaults, the key's limits, budget and
place in the fair queue, the prefix cache (each keystroke's request shares
most of its prompt with the last), cancel when the editor drops it.

The answer is llama.cpp's: `content`, `stop`, `stop_type`, `tokens_*`,
`timings` (whole, or streamed as `data:` lines of content, the last with
`stop: true`); `response_fields` picks fields ("timings/prompt_n" flattened,
as llama.cpp). `t_max_predict_ms` ends the answer once that long has passed
and a line has been written; `n_predict` 0 only prefills (llama.vim warms
the cache with it).
"""

from __future__ import annotations

import json
import time

from impetus.api import fim
from impetus.api.budget import output_budget, sampling_params, with_defaults
from impetus.api.generation import KEEPALIVE_S, raise_if_failed, stream_error
from impetus.api.generation_resource import GenerationResource, engine_for, start_stream
from impetus.api.infill_schemas import InfillRequest
from impetus.api.models import model_defaults
from impetus.api.validation import parse
from impetus.engine.request import TokenEvent

STOP_TYPES = {"stop": "eos", "length": "limit", "cancelled": "limit"}


class InfillResource(GenerationResource):
    route, id_prefix = "infill", "infill"

    def on_post(self, req, resp):
        body = parse(InfillRequest, req.context.json)
        body.model = body.model or self.settings.model
        body = with_defaults(body, self.settings, model_defaults(self.host, body.model))
        engine = engine_for(self.host, body.model, req.context.account)
        fmt = fim.require(engine.tokenizer, engine.loaded.config, engine.loaded.name, param="input_suffix")
        requested = None if body.n_predict < 0 else max(body.n_predict, 1)
        prompt, points = fim.fim_prompt(engine.tokenizer, fmt, fim.Infill(
            body.input_prefix, body.input_suffix, body.prompt, tuple(c.model_dump() for c in body.input_extra)),
            fim.room(engine, requested or self.settings.default_max_tokens))
        self.admit(req, resp, body, engine)
        max_tokens = output_budget(resp, engine, self.settings, len(prompt), requested, "input_prefix", "n_predict")
        params = sampling_params(body, max_tokens, engine, logprobs=False, top_logprobs=0)
        params.stop = list(params.stop) + fim.stop_markers(fmt)
        params.keep_prefixes = points
        gen = self.generation(req, resp, engine, [prompt], [params], prompt_tokens=len(prompt), priority=body.priority,
                              autocomplete=True)
        answer = Answer(gen, body, engine.loaded.name, engine.loaded.context_length)
        if body.stream:
            start_stream(resp, answer.stream())
        else:
            resp.media = answer.whole()


class Answer:
    """One infill's events as llama.cpp's answer, whole or streamed."""

    def __init__(self, gen, body: InfillRequest, model: str, context: int):
        self.gen, self.body, self.model, self.context = gen, body, model, context
        self.text, self.tokens, self.newline = "", 0, False
        self.first_at = None
        self.timed_out = False

    def _take(self, event: TokenEvent) -> str:
        """A token's text; past t_max_predict_ms with a line written, the generation is ended."""
        now = time.perf_counter()
        self.first_at = self.first_at or now
        if self.body.n_predict == 0:  # a warm-up: the prompt is in the prefix cache now, nothing is answered
            return ""
        self.tokens += 1
        text = event.text
        self.text += text
        self.newline = self.newline or "\n" in self.text
        limit = self.body.t_max_predict_ms
        if limit and self.newline and (now - self.first_at) * 1000 > limit:
            self.timed_out = True
            self.gen.cancel()
        return text

    def _final(self, finish) -> dict:
        reason = "limit" if self.timed_out else STOP_TYPES.get(finish.reason, "limit")
        if finish.stop_string:
            reason = "word"
        _, prompt_s, predicted_s = self.gen.durations()
        answer = {
            "index": 0, "content": "" if self.body.stream else self.text, "stop": True, "model": self.model,
            "tokens_predicted": self.tokens, "tokens_evaluated": self.gen.prompt_tokens,
            "tokens_cached": finish.cached_tokens, "stop_type": reason, "stopping_word": finish.stop_string or "",
            "truncated": False, "has_new_line": self.newline,
            "generation_settings": {"n_ctx": self.context, "model": self.model, "n_predict": self.body.n_predict,
                                    "temperature": self.body.temperature, "top_k": self.body.top_k,
                                    "top_p": self.body.top_p},
            "timings": {"prompt_n": self.gen.prompt_tokens - finish.cached_tokens,
                        "prompt_ms": prompt_s * 1000, "predicted_n": self.tokens,
                        "predicted_ms": predicted_s * 1000, "cache_n": finish.cached_tokens},
        }
        return picked(answer, self.body.response_fields)

    def whole(self) -> dict:
        try:
            for index, event in self.gen.events(notes=False):
                if isinstance(event, TokenEvent):
                    self._take(event)
                elif index is not None:
                    raise_if_failed(event)
                    if event.text and self.body.n_predict != 0:
                        self.text += event.text
                    return self._final(event)
        finally:
            self.gen.close()
        return {}

    def stream(self):
        try:
            for index, event in self.gen.events(heartbeat=KEEPALIVE_S):
                if index is None:
                    yield b": keep-alive\n\n"
                elif isinstance(event, TokenEvent):
                    text = self._take(event)
                    if text:
                        yield _line({"index": 0, "content": text, "stop": False, "tokens_predicted": self.tokens})
                else:
                    if (error := stream_error(event)) is not None:
                        yield _line(error)
                        return
                    if event.text and self.body.n_predict != 0:
                        yield _line({"index": 0, "content": event.text, "stop": False})
                    yield _line(self._final(event))
                    return
        finally:
            self.gen.close()


def _line(data: dict) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def picked(answer: dict, fields: list[str] | None) -> dict:
    """llama.cpp's response_fields: only those, "a/b" read from answer["a"]["b"] under the key "a/b"."""
    if not fields:
        return answer
    out = {}
    for name in fields:
        value = answer
        for part in name.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            out[name] = value
    return out
