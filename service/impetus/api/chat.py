"""POST /v1/chat/completions"""

from __future__ import annotations

from impetus.api import images, tools
from impetus.api.budget import output_budget, sampling_params
from impetus.api.chat_schemas import ChatCompletionRequest
from impetus.api.generation import KEEPALIVE, KEEPALIVE_S, Generation, stream_error, usage
from impetus.api.generation_resource import CompletionResource
from impetus.api.output import REASONING, OutputParser, Parsed
from impetus.api.prompt import prefix_points, render_chat
from impetus.engine import structured
from impetus.engine.host import run_off_the_hub
from impetus.engine.media import Media
from impetus.engine.request import SamplingParams, TokenEvent
from impetus.web import bad_request


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


def prepare(resp, engine, settings, chat: ChatCompletionRequest, requested: int | None, prompt_param: str,
            max_param: str, overflow: str | None = None
            ) -> tuple[list[int], SamplingParams, str | None, Media | None]:
    """A chat request's prompt, sampling params, tool mode and images: the
    one path from request to engine work for chat completions and for the
    Messages and Responses faces (which turn themselves into chat requests).
    `requested` is the output length asked for, clamped to the room
    (output_budget)."""
    tool_mode = tools.mode(chat)
    first = settings.tools_before_system
    prompt, media, marker = prompt_of(engine, settings, chat.messages, chat.tools, chat.template_arguments())
    max_tokens = output_budget(resp, engine, settings, len(prompt), requested, prompt_param, max_param,
                                          overflow)
    params = sampling_params(chat, max_tokens, engine, logprobs=chat.logprobs, top_logprobs=chat.top_logprobs or 0)
    params.grammar = output_grammar(chat, tool_mode, engine.tokenizer)
    params.keep_prefixes = prefix_points(engine.tokenizer, chat.messages, chat.tools, chat.template_arguments(),
                                         prompt, settings.prefix_checkpoint_min_tokens, first, marker)
    if media is not None:  # its next turn, or the same image again, starts after the images (Gemma 3: only there)
        params.keep_prefixes = sorted({*params.keep_prefixes, len(prompt) - 1})
    if chat.prediction is not None:
        params.prediction = engine.tokenizer.encode(chat.prediction.text, add_special_tokens=False)
    return prompt, params, tool_mode, media


def prompt_of(engine, settings, messages, tool_list, template_kwargs
              ) -> tuple[list[int], Media | None, str | None]:
    """A conversation's prompt tokens, its images, and the text that stands
    for an image in the model's template (None: a text model, which refuses
    images by the part's name)."""
    vision = engine.loaded.vision
    marker = vision.marker if vision is not None else None
    rendered = render_chat(engine.tokenizer, messages, tool_list, template_kwargs, settings.tools_before_system,
                           marker)
    if vision is not None:
        return (*with_images(vision, rendered, messages, settings), marker)
    found = images.located(messages)
    if found:
        raise bad_request(f"{engine.loaded.name} is a text model: it does not take images.", param=found[0][1],
                          code="image_input_not_supported")
    return rendered, None, None


def with_images(vision, text: str, messages, settings) -> tuple[list[int], Media | None]:
    """A vision model's prompt: its tokens from the model's processor, and
    its images (decoded within the limits, api.images), if any."""
    def made():
        pictures = images.gather(messages, settings)
        try:
            return vision.prepare(text, [p.image for p in pictures]), pictures
        except ValueError as error:  # the text names more or fewer images than it carries
            raise bad_request(f"The model's processor rejected the prompt's images: {error}", param="messages",
                              code="invalid_image") from None

    prepared, pictures = run_off_the_hub(made)
    if not pictures:
        return prepared.tokens, None
    if prepared.spans[-1][1] >= len(prepared.tokens):
        raise bad_request("The prompt ends with an image: nothing follows for the model to answer from.",
                          param="messages", code="invalid_image")
    return prepared.tokens, Media(prepared.inputs, prepared.spans, [p.digest for p in pictures])


def token_logprobs(tokenizer, tokens, logprobs, tops) -> list[dict]:
    def entry(token, logprob):
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return [
        {**entry(t, lp), "top_logprobs": [entry(tt, tlp) for tt, tlp in top]}
        for t, lp, top in zip(tokens, logprobs, tops)
    ]


def message_of(parsed: Parsed, tool_mode: str | None) -> dict:
    """The assistant message of a parsed choice: its text (None when it only
    called tools), its reasoning apart, its tool calls."""
    message = {"role": "assistant", "content": (parsed.text or None) if tool_mode else parsed.text}
    if parsed.reasoning:
        message["reasoning_content"] = parsed.reasoning
    if parsed.calls:
        message["tool_calls"] = parsed.calls
    return message


def chat_response(meta: dict, gen: Generation, tokenizer, logprobs: bool, new_parser, tool_mode=None) -> dict:
    choices = []
    for c in gen.choices:
        parsed = new_parser().whole(c.text)
        choices.append({
            "index": c.index,
            "message": message_of(parsed, tool_mode),
            "finish_reason": "tool_calls" if parsed.calls and c.finish.reason == "stop" else c.finish.reason,
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


def replay_chat(response: dict):
    """A complete (cached) chat.completion as the chunks a stream would have sent."""
    base = {k: response[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    for choice in response["choices"]:
        index = choice["index"]
        message = choice["message"]
        yield {**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None, "logprobs": None}]}
        if message.get("reasoning_content"):
            yield {**base, "choices": [{"index": index, "delta": {"reasoning_content": message["reasoning_content"]},
                                        "finish_reason": None, "logprobs": None}]}
        if message.get("content"):
            yield {**base, "choices": [{"index": index, "delta": {"content": message["content"]},
                                        "finish_reason": None, "logprobs": choice.get("logprobs")}]}
        for delta in tool_call_deltas(index, message.get("tool_calls") or []):
            yield {**base, "choices": [delta]}
        yield {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice["finish_reason"],
                                    "logprobs": None}]}


class ChatCompletionsResource(CompletionResource):
    route, id_prefix, schema = "chat", "chatcmpl", ChatCompletionRequest
    replay = staticmethod(replay_chat)

    def run(self, req, resp, body, engine, lookup, include_usage):
        tokenizer = engine.tokenizer
        prompt, params, tool_mode, media = prepare(
            resp, engine, self.settings, body, body.max_completion_tokens or body.max_tokens, "messages",
            "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
        gen = self.generation(req, resp, engine, [prompt] * body.n, [params] * body.n, prompt_tokens=len(prompt),
                              priority=body.priority, media=media)
        meta = self.response_meta(gen)

        def new_parser() -> OutputParser:
            return OutputParser.for_prompt(tokenizer, prompt, tool_mode, body.tools)

        def complete() -> dict:
            response = chat_response(meta, gen, tokenizer, body.logprobs, new_parser, tool_mode)
            self.cache_store(lookup, gen, response)
            return response

        chunks = self._chunks(gen, meta, tokenizer, include_usage, body.logprobs, complete, new_parser)
        self.answer(resp, gen, body.stream, chunks, complete)

    def _chunks(self, gen, meta, tokenizer, include_usage, logprobs, complete, new_parser):
        base = {**meta, "object": "chat.completion.chunk"}
        parsers = [new_parser() for _ in gen.handles]

        def chunk(index: int, delta: dict, finish_reason=None, token_logprobs=None) -> dict:
            return {**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason,
                                         "logprobs": token_logprobs}]}

        def deltas(index: int, parts):
            for kind, text in parts:
                yield chunk(index, {"reasoning_content" if kind == REASONING else "content": text})

        try:
            for index in range(len(gen.handles)):
                yield chunk(index, {"role": "assistant", "content": ""})
            for index, event in gen.events(heartbeat=KEEPALIVE_S):
                if index is None:  # still waiting for a batch slot, or silent (a long prefill)
                    yield event.comment() if event is not None else KEEPALIVE
                    continue
                if isinstance(event, TokenEvent):
                    parts = parsers[index].feed(event.text)
                    if logprobs:  # one chunk per token, with its logprob, whatever it made visible
                        kind, text = parts[0] if len(parts) == 1 else (None, "".join(t for _, t in parts))
                        yield chunk(index, {"reasoning_content" if kind == REASONING else "content": text},
                                    token_logprobs={"content": token_logprobs(
                                        tokenizer, [event.token], [event.logprob], [event.top_logprobs or []])})
                    else:
                        yield from deltas(index, parts)
                    continue
                if (error := stream_error(event)) is not None:
                    yield error
                    return
                parts, calls = parsers[index].finish(event.text)
                yield from deltas(index, parts)
                yield from ({**base, "choices": [delta]} for delta in tool_call_deltas(index, calls))
                yield chunk(index, {}, "tool_calls" if calls and event.reason == "stop" else event.reason)
            response = complete()
            if include_usage:
                yield {**base, "choices": [], "usage": response["usage"]}
        finally:
            gen.close()
