"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API,
which Claude Code (and LangChain's ChatAnthropic, and the `anthropic` SDK)
speak, as a face over the chat completions core: the request becomes a chat
request (`MessagesRequest.to_chat`), so the template, tools, constrained
calls, sampling, engine, limits and billing are the same; only the response
and its stream events are Anthropic's.

- `max_tokens` is required, as Anthropic has it, and always clamped to the
  room the prompt leaves (Claude Code sends 32000 whatever the model), never
  a 400; the granted number is in the x-impetus-max-tokens header.
- Streaming: message_start, a ping, then per content block
  content_block_start / _delta (thinking_delta, text_delta, input_json_delta)
  / _stop, then
  message_delta (stop_reason, usage) and message_stop. A ping goes out every
  PING_S seconds of silence, as while a long prompt prefills (~100 tokens/s
  on a 2-core CPU: Claude Code's default prompt, 12-21k tokens by release, is minutes), so
  proxies and clients do not give up.
- Errors, here alone, come in Anthropic's shape (api.errors).
"""

from __future__ import annotations

import json
import uuid

from pydantic import ValidationError

from impetus.api.budget import with_defaults
from impetus.api.chat import prepare, prompt_of
from impetus.api.errors import from_validation_error
from impetus.api.generation_resource import GenerationResource, engine_for, start_stream, typed_sse
from impetus.api.messages_schemas import MessagesCountRequest, MessagesRequest
from impetus.api.models import model_defaults
from impetus.api.output import CALL, END, ERROR, PING, QUEUED, REASONING, TEXT, OutputParser, parsed_stream
from impetus.api.validation import parse

PING_S = 5.0

STOP_REASONS = {"length": "max_tokens", "stop": "end_turn"}


def to_chat(body: MessagesRequest, keep_billing_header: bool):
    try:
        return body.to_chat(keep_billing_header)
    except ValidationError as error:
        raise from_validation_error(error) from None


def tool_use_block(call: dict) -> dict:
    """An OpenAI-shaped tool call as Anthropic's tool_use content block."""
    arguments = json.loads(call["function"]["arguments"] or "{}")
    return {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": call["function"]["name"],
            "input": arguments if isinstance(arguments, dict) else {"value": arguments}}


def stop_reason(finish, called: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished generation."""
    if finish.reason == "stop" and finish.stop_string is not None:
        return "stop_sequence", finish.stop_string
    if called and finish.reason == "stop":
        return "tool_use", None
    return STOP_REASONS.get(finish.reason, "end_turn"), None


def messages_usage(prompt_tokens: int, finish) -> dict:
    """Anthropic counts prompt tokens read from the (prefix) cache apart from the rest."""
    cached = finish.cached_tokens if finish is not None else 0
    return {"input_tokens": prompt_tokens - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": finish.completion_tokens if finish else 0}


class MessagesResource(GenerationResource):
    route = "messages"
    id_prefix = "msg"

    def on_post(self, req, resp):
        body = parse(MessagesRequest, req.context.json)
        defaults = model_defaults(self.host, body.model)
        body = with_defaults(body, self.settings, defaults)
        chat = with_defaults(to_chat(body, self.settings.keep_billing_header), self.settings, defaults)
        engine = engine_for(self.host, body.model, req.context.account)
        self.admit(req, resp, body, engine)
        tokenizer = engine.tokenizer
        prompt, params, tool_mode, media = prepare(resp, engine, self.settings, chat, body.max_tokens, "messages",
                                                   "max_tokens", overflow="clamp")
        gen = self.generation(req, resp, engine, [prompt], [params], prompt_tokens=len(prompt),
                              priority=chat.priority, media=media)
        head = {"id": f"msg_{gen.id_suffix}", "type": "message", "role": "assistant", "model": engine.loaded.name}
        parser = OutputParser.for_prompt(tokenizer, prompt, tool_mode, chat.tools)

        if not body.stream:
            [choice] = gen.collect()
            parsed = parser.whole(choice.text)
            content = [thinking_block(parsed.reasoning)] if parsed.reasoning else []
            content += [{"type": "text", "text": parsed.text}] if parsed.text else []
            content += [tool_use_block(call) for call in parsed.calls]
            reason, sequence = stop_reason(choice.finish, bool(parsed.calls))
            resp.media = {**head, "content": content, "stop_reason": reason, "stop_sequence": sequence,
                          "usage": messages_usage(gen.prompt_tokens, choice.finish)}
            return
        start_stream(resp, typed_sse(self._events(gen, head, parser)))

    def _events(self, gen, head, parser):
        blocks = _Blocks()
        called = False
        try:
            yield {"type": "message_start", "message": {**head, "content": [], "stop_reason": None,
                                                        "stop_sequence": None,
                                                        "usage": messages_usage(gen.prompt_tokens, None)}}
            yield {"type": "ping"}
            for kind, value in parsed_stream(gen, parser, heartbeat=PING_S):
                if kind == PING:
                    yield {"type": "ping"}
                elif kind == QUEUED:
                    yield value.comment()
                elif kind == ERROR:
                    yield {"type": "error", "error": {"type": "api_error",
                                                      "message": "Generation failed inside the engine."}}
                elif kind == CALL:
                    called = True
                    yield from blocks.tool_use(tool_use_block(value))
                elif kind == END:
                    yield from blocks.close()
                    reason, sequence = stop_reason(value, called)
                    yield {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                           "usage": messages_usage(gen.prompt_tokens, value)}
                    yield {"type": "message_stop"}
                else:
                    yield from blocks.part(kind, value)
        finally:
            gen.close()


def thinking_block(text: str) -> dict:
    # No signature: nothing here verifies one; clients send the block back as it is.
    return {"type": "thinking", "thinking": text, "signature": ""}


class _Blocks:
    """The content blocks of a streamed message: a thinking or text block is
    opened by its first piece and closed when another kind of block follows
    or the message ends."""

    DELTAS = {REASONING: ("thinking", "thinking_delta"), TEXT: ("text", "text_delta")}

    def __init__(self):
        self.index = -1
        self.open = None  # REASONING or TEXT

    def part(self, kind: str, text: str):
        if not text:
            return
        block, delta = self.DELTAS[kind]
        if self.open != kind:
            yield from self.close()
            self.index += 1
            self.open = kind
            start = thinking_block("") if kind == REASONING else {"type": "text", "text": ""}
            yield {"type": "content_block_start", "index": self.index, "content_block": start}
        yield {"type": "content_block_delta", "index": self.index, "delta": {"type": delta, block: text}}

    def close(self):
        if self.open is not None:
            self.open = None
            yield {"type": "content_block_stop", "index": self.index}

    def tool_use(self, block: dict):
        yield from self.close()
        self.index += 1
        yield {"type": "content_block_start", "index": self.index, "content_block": {**block, "input": {}}}
        yield {"type": "content_block_delta", "index": self.index,
               "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}}
        yield {"type": "content_block_stop", "index": self.index}


class CountTokensResource:
    """POST /v1/messages/count_tokens: the prompt tokens the same message request would have."""

    def __init__(self, host, settings):
        self.host = host
        self.settings = settings

    def on_post(self, req, resp):
        body = parse(MessagesCountRequest, req.context.json)
        engine = engine_for(self.host, body.model, req.context.account)
        tool_list, _ = body.chat_tools()
        messages = body.chat_messages(self.settings.keep_billing_header)
        prompt, _, _ = prompt_of(engine, self.settings, messages, tool_list, body.template_kwargs())
        resp.media = {"input_tokens": len(prompt)}  # image tokens included

