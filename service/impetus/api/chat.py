"""POST /v1/chat/completions"""

from __future__ import annotations

from impetus.api import generation
from impetus.api.errors import bad_request
from impetus.api.generation import Generation, GenerationResource, sampling_params, sse, stream_error, usage
from impetus.api.schemas import ChatCompletionRequest
from impetus.api.validation import parse
from impetus.engine.request import TokenEvent


def render_chat(tokenizer, messages) -> list[int]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise bad_request("This model has no chat template; use /v1/completions.", param="model")
    conversation = [
        # Few templates know OpenAI's "developer" role; it means "system".
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in messages
    ]
    try:
        tokens = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    except Exception as error:  # the template itself rejects the conversation
        raise bad_request(f"The model's chat template rejected the messages: {error}", param="messages")
    if isinstance(tokens, dict):  # some transformers versions return a BatchEncoding
        tokens = tokens["input_ids"]
    return list(tokens)


def token_logprobs(tokenizer, tokens, logprobs, tops) -> list[dict]:
    def entry(token, logprob):
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return [
        {**entry(t, lp), "top_logprobs": [entry(tt, tlp) for tt, tlp in top]}
        for t, lp, top in zip(tokens, logprobs, tops)
    ]


def chat_response(meta: dict, gen: Generation, tokenizer, logprobs: bool) -> dict:
    return {
        **meta,
        "object": "chat.completion",
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish.reason,
                "logprobs": {"content": token_logprobs(tokenizer, c.tokens, c.logprobs, c.top_logprobs)}
                if logprobs else None,
            }
            for c in gen.choices
        ],
        "usage": usage(gen.prompt_tokens, [c.finish for c in gen.choices]),
    }


def replay_chat(response: dict, include_usage: bool):
    """A complete (cached) chat.completion as the chunks a stream would have sent."""
    base = {k: response[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    for choice in response["choices"]:
        index = choice["index"]
        yield {**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None, "logprobs": None}]}
        yield {**base, "choices": [{"index": index, "delta": {"content": choice["message"]["content"]},
                                    "finish_reason": None, "logprobs": choice.get("logprobs")}]}
        yield {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice["finish_reason"],
                                    "logprobs": None}]}
    if include_usage:
        yield {**base, "choices": [], "usage": response["usage"]}


class ChatCompletionsResource(GenerationResource):
    route = "chat"
    id_prefix = "chatcmpl"
    replay = staticmethod(replay_chat)

    def on_post(self, req, resp):
        body = parse(ChatCompletionRequest, req.context.json)
        engine = generation.engine_for(self.host, body.model)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        lookup = self.admit(req, resp, body, engine)
        if self.served_from_cache(resp, lookup, body.stream, include_usage):
            return

        tokenizer = engine.tokenizer
        prompt = render_chat(tokenizer, body.messages)
        params = sampling_params(
            body, engine, len(prompt), body.max_completion_tokens or body.max_tokens,
            self.settings.default_max_tokens, logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0,
        )
        gen = self.generation(req, engine, [prompt] * body.n, [params] * body.n, prompt_tokens=len(prompt))
        meta = self.response_meta(gen)

        def complete() -> dict:
            response = chat_response(meta, gen, tokenizer, body.logprobs)
            self.cache_store(lookup, gen, response)
            return response

        if body.stream:
            generation.start_stream(resp, sse(self._chunks(gen, meta, tokenizer, include_usage, body.logprobs,
                                                           complete)))
            return
        gen.collect()
        resp.media = complete()

    def _chunks(self, gen, meta, tokenizer, include_usage, logprobs, complete):
        base = {**meta, "object": "chat.completion.chunk"}
        try:
            for index in range(len(gen.handles)):
                yield {**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None, "logprobs": None}]}
            for index, event in gen.events():
                if isinstance(event, TokenEvent):
                    if not event.text and not logprobs:
                        continue
                    choice = {"index": index, "delta": {"content": event.text}, "finish_reason": None,
                              "logprobs": None}
                    if logprobs:
                        choice["logprobs"] = {"content": token_logprobs(
                            tokenizer, [event.token], [event.logprob], [event.top_logprobs or []])}
                    yield {**base, "choices": [choice]}
                    continue
                if (error := stream_error(event)) is not None:
                    yield error
                    return
                delta = {"content": event.text} if event.text else {}
                yield {**base, "choices": [{"index": index, "delta": delta, "finish_reason": event.reason,
                                            "logprobs": None}]}
            response = complete()
            if include_usage:
                yield {**base, "choices": [], "usage": response["usage"]}
        finally:
            gen.close()
