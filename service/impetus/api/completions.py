"""POST /v1/completions (legacy text completions)"""

from __future__ import annotations

from impetus.api import fim
from impetus.api.budget import output_budget, sampling_params
from impetus.api.chat_schemas import CompletionRequest
from impetus.api.generation import KEEPALIVE, KEEPALIVE_S, Generation, stream_error, usage
from impetus.api.generation_resource import CompletionResource
from impetus.engine.request import TokenEvent
from impetus.web import bad_request


def prompt_tokens(tokenizer, prompt, vocab_size: int) -> list[list[int]]:
    """str | [str] | [int] | [[int]] -> one token list per prompt."""
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt[0], int):
        prompts = [prompt]
    else:
        prompts = prompt
    result = []
    for p in prompts:
        if isinstance(p, str):
            tokens = tokenizer.encode(p)
            if not tokens:
                raise bad_request("prompt must not be empty.", param="prompt")
        else:
            bad = [t for t in p if not 0 <= t < vocab_size]
            if bad:
                raise bad_request(f"prompt token {bad[0]} is outside the vocabulary.", param="prompt")
            tokens = list(p)
        result.append(tokens)
    return result


def text_logprobs(tokenizer, tokens, logprobs, tops, offset: int) -> dict:
    strings = [tokenizer.decode([t]) for t in tokens]
    offsets = []
    for s in strings:
        offsets.append(offset)
        offset += len(s)
    return {
        "tokens": strings,
        "token_logprobs": logprobs,
        "top_logprobs": [{tokenizer.decode([t]): lp for t, lp in top} for top in tops],
        "text_offset": offsets,
    }


def completion_response(meta: dict, gen: Generation, tokenizer, n: int, echoes: list[str],
                        want_logprobs: bool) -> dict:
    return {
        **meta,
        "choices": [
            {
                "index": c.index,
                "text": echoes[c.index // n] + c.text,
                "finish_reason": c.finish.reason,
                "logprobs": text_logprobs(tokenizer, c.tokens, c.logprobs, c.top_logprobs,
                                          len(echoes[c.index // n])) if want_logprobs else None,
            }
            for c in gen.choices
        ],
        "usage": usage(gen.prompt_tokens, [c.finish for c in gen.choices]),
    }


def replay_completion(response: dict):
    """A complete (cached) text_completion as the chunks a stream would have sent."""
    base = {k: response[k] for k in ("id", "object", "created", "model", "system_fingerprint")}
    for choice in response["choices"]:
        yield {**base, "choices": [{"index": choice["index"], "text": choice["text"], "finish_reason": None,
                                    "logprobs": choice.get("logprobs")}]}
        yield {**base, "choices": [{"index": choice["index"], "text": "",
                                    "finish_reason": choice["finish_reason"], "logprobs": None}]}


class CompletionsResource(CompletionResource):
    route, id_prefix, schema = "completions", "cmpl", CompletionRequest
    replay = staticmethod(replay_completion)

    def run(self, req, resp, body, engine, lookup, include_usage):
        tokenizer = engine.tokenizer
        stops: list[str] = []
        points: list[list[int]] = []
        if body.suffix is not None:  # fill in the middle: the prompt before the cursor, the suffix after
            fmt = fim.require(tokenizer, engine.loaded.config, engine.loaded.name)
            room = fim.room(engine, body.max_tokens or self.settings.default_max_tokens)
            texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
            prompts, points = map(list, zip(*(fim.fim_prompt(tokenizer, fmt, fim.Infill(text, body.suffix), room)
                                              for text in texts)))
            stops = fim.stop_markers(fmt)
        else:
            prompts = prompt_tokens(tokenizer, body.prompt, engine.loaded.config.get("vocab_size", 0))
        want_logprobs = body.logprobs is not None
        all_prompts, all_params = [], []
        for i, p in enumerate(prompts):
            max_tokens = output_budget(resp, engine, self.settings, len(p), body.max_tokens, "prompt", "max_tokens")
            params = sampling_params(body, max_tokens, engine, logprobs=want_logprobs,
                                     top_logprobs=body.logprobs or 0)
            params.stop = list(params.stop) + stops
            params.keep_prefixes = points[i] if points else []
            all_prompts += [p] * body.n
            all_params += [params] * body.n
        gen = self.generation(req, resp, engine, all_prompts, all_params, prompt_tokens=sum(len(p) for p in prompts),
                              priority=body.priority, autocomplete=body.suffix is not None)
        meta = {**self.response_meta(gen), "object": "text_completion"}
        echoes = [tokenizer.decode(p) if body.echo else "" for p in prompts]

        def complete() -> dict:
            response = completion_response(meta, gen, tokenizer, body.n, echoes, want_logprobs)
            self.cache_store(lookup, gen, response)
            return response

        chunks = self._chunks(gen, meta, tokenizer, body.n, echoes, include_usage, want_logprobs, complete)
        self.answer(resp, gen, body.stream, chunks, complete)

    def _chunks(self, gen, meta, tokenizer, n, echoes, include_usage, want_logprobs, complete):
        try:
            for index in range(len(gen.handles)):
                if echoes[index // n]:
                    yield {**meta, "choices": [{"index": index, "text": echoes[index // n],
                                                "finish_reason": None, "logprobs": None}]}
            for index, event in gen.events(heartbeat=KEEPALIVE_S):
                if index is None:  # still waiting for a batch slot, or silent (a long prefill)
                    yield event.comment() if event is not None else KEEPALIVE
                    continue
                if isinstance(event, TokenEvent):
                    if not event.text and not want_logprobs:
                        continue
                    logprobs = None
                    if want_logprobs:
                        logprobs = text_logprobs(tokenizer, [event.token], [event.logprob],
                                                 [event.top_logprobs or []], 0)
                    yield {**meta, "choices": [{"index": index, "text": event.text, "finish_reason": None,
                                                "logprobs": logprobs}]}
                    continue
                if (error := stream_error(event)) is not None:
                    yield error
                    return
                yield {**meta, "choices": [{"index": index, "text": event.text,
                                            "finish_reason": event.reason, "logprobs": None}]}
            response = complete()
            if include_usage:
                yield {**meta, "choices": [], "usage": response["usage"]}
        finally:
            gen.close()
