"""POST /v1/chat/completions"""

from __future__ import annotations

from impetus.api import generation, tools
from impetus.api.errors import bad_request
from impetus.api.generation import Generation, GenerationResource, sampling_params, sse, stream_error, usage
from impetus.api.schemas import ChatCompletionRequest
from impetus.api.validation import parse
from impetus.engine import structured
from impetus.engine.host import run_off_the_hub
from impetus.engine.request import TokenEvent


def render_chat(tokenizer, messages, tool_list=None) -> list[int]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise bad_request("This model has no chat template; use /v1/completions.", param="model")
    conversation, extra = tools.conversation(messages, tool_list, tokenizer)
    try:
        tokens = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, **extra)
    except Exception as error:  # the template itself rejects the conversation
        raise bad_request(f"The model's chat template rejected the messages: {error}", param="messages")
    if isinstance(tokens, dict):  # some transformers versions return a BatchEncoding
        tokens = tokens["input_ids"]
    return list(tokens)


def output_grammar(body, tool_mode: str | None, tokenizer) -> str | None:
    """The grammar the output must match: a call of an allowed function when
    one must be made, else the response_format's schema; None for free text."""
    fmt = body.response_format
    if tool_mode == "forced":
        schema, param = tools.call_schema(body.tools, body.tool_choice), "tools"
    elif fmt is None or fmt.type == "text":
        return None
    elif tool_mode == "auto":
        raise bad_request("response_format together with tools that the model may or may not call "
                          "(tool_choice 'auto') is not supported; use tool_choice 'required' or 'none'.",
                          param="response_format", code="unsupported_value")
    else:
        schema = {"type": "object"} if fmt.type == "json_object" else fmt.json_schema.json_schema
        param = "response_format"

    def compile_and_check() -> str:
        grammar = structured.json_schema_grammar(schema)
        structured.check_grammar(grammar, structured.ll_tokenizer(tokenizer))
        return grammar

    try:  # building the tokenizer's token table (once per model) and compiling take a while
        return run_off_the_hub(compile_and_check)
    except structured.GrammarError as error:
        raise bad_request(f"The schema cannot be enforced: {error}", param=param, code="invalid_schema") from None


def token_logprobs(tokenizer, tokens, logprobs, tops) -> list[dict]:
    def entry(token, logprob):
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return [
        {**entry(t, lp), "top_logprobs": [entry(tt, tlp) for tt, tlp in top]}
        for t, lp, top in zip(tokens, logprobs, tops)
    ]


def message_of(text: str, tool_mode: str | None, tokenizer, tool_list) -> tuple[dict, bool]:
    """The assistant message for a choice's text, and whether it called tools."""
    if tool_mode is None:
        return {"role": "assistant", "content": text}, False
    if tool_mode == "forced":
        calls = tools.parse_forced(text)
        message = {"role": "assistant", "content": None if calls else text}  # no call: cut off by max_tokens
    else:
        calls, content = tools.parse_auto(text, tokenizer, tool_list)
        message = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = calls
    return message, bool(calls)


def chat_response(meta: dict, gen: Generation, tokenizer, logprobs: bool, tool_mode=None, tool_list=None) -> dict:
    choices = []
    for c in gen.choices:
        message, called = message_of(c.text, tool_mode, tokenizer, tool_list)
        choices.append({
            "index": c.index,
            "message": message,
            "finish_reason": "tool_calls" if called and c.finish.reason == "stop" else c.finish.reason,
            "logprobs": {"content": token_logprobs(tokenizer, c.tokens, c.logprobs, c.top_logprobs)}
            if logprobs else None,
        })
    return {**meta, "object": "chat.completion", "choices": choices,
            "usage": usage(gen.prompt_tokens, [c.finish for c in gen.choices])}


def tool_call_deltas(index: int, calls: list[dict]):
    """A choice's tool calls as OpenAI streams them: the call's id and name
    first, then its arguments."""
    for number, call in enumerate(calls):
        yield {"index": index, "delta": {"tool_calls": [{"index": number, "id": call["id"], "type": "function",
                                                          "function": {"name": call["function"]["name"],
                                                                       "arguments": ""}}]},
               "finish_reason": None, "logprobs": None}
        yield {"index": index, "delta": {"tool_calls": [{"index": number, "function": {
            "arguments": call["function"]["arguments"]}}]}, "finish_reason": None, "logprobs": None}


def replay_chat(response: dict, include_usage: bool):
    """A complete (cached) chat.completion as the chunks a stream would have sent."""
    base = {k: response[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    for choice in response["choices"]:
        index = choice["index"]
        message = choice["message"]
        yield {**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None, "logprobs": None}]}
        if message.get("content"):
            yield {**base, "choices": [{"index": index, "delta": {"content": message["content"]},
                                        "finish_reason": None, "logprobs": choice.get("logprobs")}]}
        for delta in tool_call_deltas(index, message.get("tool_calls") or []):
            yield {**base, "choices": [delta]}
        yield {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice["finish_reason"],
                                    "logprobs": None}]}
    if include_usage:
        yield {**base, "choices": [], "usage": response["usage"]}


class ChatCompletionsResource(GenerationResource):
    route = "chat"
    id_prefix = "chatcmpl"
    replay = staticmethod(replay_chat)

    def on_post(self, req, resp):
        body = generation.with_defaults(parse(ChatCompletionRequest, req.context.json), self.settings)
        engine = generation.engine_for(self.host, body.model)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        lookup = self.admit(req, resp, body, engine)
        if self.served_from_cache(resp, lookup, body.stream, include_usage):
            return

        tokenizer = engine.tokenizer
        tool_mode = tools.mode(body)
        prompt = render_chat(tokenizer, body.messages, body.tools)
        max_tokens = generation.output_budget(
            resp, engine, self.settings, len(prompt), body.max_completion_tokens or body.max_tokens, "messages",
            "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
        params = sampling_params(body, max_tokens, engine, logprobs=body.logprobs,
                                 top_logprobs=body.top_logprobs or 0)
        params.grammar = output_grammar(body, tool_mode, tokenizer)
        gen = self.generation(req, engine, [prompt] * body.n, [params] * body.n, prompt_tokens=len(prompt))
        meta = self.response_meta(gen)

        def complete() -> dict:
            response = chat_response(meta, gen, tokenizer, body.logprobs, tool_mode, body.tools)
            self.cache_store(lookup, gen, response)
            return response

        if body.stream:
            chunks = self._chunks(gen, meta, tokenizer, include_usage, body.logprobs, complete, tool_mode,
                                  body.tools)
            generation.start_stream(resp, sse(chunks))
            return
        gen.collect()
        resp.media = complete()

    def _chunks(self, gen, meta, tokenizer, include_usage, logprobs, complete, tool_mode, tool_list):
        base = {**meta, "object": "chat.completion.chunk"}
        # With tools, text is held from a call marker on (all of it when a call
        # must be made) and turned into tool-call deltas at the end.
        splitters = [tools.CallSplitter(tools.markers(tokenizer)[0]) if tool_mode == "auto" else None
                     for _ in gen.handles]
        held = [""] * len(gen.handles)
        try:
            for index in range(len(gen.handles)):
                yield {**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None, "logprobs": None}]}
            for index, event in gen.events():
                if isinstance(event, TokenEvent):
                    text = event.text
                    if tool_mode == "forced":
                        held[index] += text
                        continue
                    if splitters[index] is not None:
                        text = splitters[index].feed(text)
                    if not text and not logprobs:
                        continue
                    choice = {"index": index, "delta": {"content": text}, "finish_reason": None,
                              "logprobs": None}
                    if logprobs:
                        choice["logprobs"] = {"content": token_logprobs(
                            tokenizer, [event.token], [event.logprob], [event.top_logprobs or []])}
                    yield {**base, "choices": [choice]}
                    continue
                if (error := stream_error(event)) is not None:
                    yield error
                    return
                reason = event.reason
                if tool_mode is None:
                    delta = {"content": event.text} if event.text else {}
                else:
                    content, calls = tools.finish_stream(tool_mode, held[index], splitters[index], event.text,
                                                         tokenizer, tool_list)
                    if content:
                        yield {**base, "choices": [{"index": index, "delta": {"content": content},
                                                    "finish_reason": None, "logprobs": None}]}
                    for delta in tool_call_deltas(index, calls):
                        yield {**base, "choices": [delta]}
                    delta = {}
                    if calls and reason == "stop":
                        reason = "tool_calls"
                yield {**base, "choices": [{"index": index, "delta": delta, "finish_reason": reason,
                                            "logprobs": None}]}
            response = complete()
            if include_usage:
                yield {**base, "choices": [], "usage": response["usage"]}
        finally:
            gen.close()
