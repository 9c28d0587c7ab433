"""POST /v1/responses: OpenAI's newer API, for text in and text out, on the
same engine as chat completions (the input is rendered with the chat
template; `instructions` is the system message).

Streaming sends the Responses API's typed events: response.created,
response.in_progress, output_item.added, content_part.added, a
response.output_text.delta per piece of text, then the .done events and
response.completed (or response.incomplete when max_output_tokens cut it)."""

from __future__ import annotations

import itertools
import time

from impetus.api import generation
from impetus.api.chat import output_grammar, render_chat
from impetus.api.generation import GenerationResource, new_id_suffix, start_stream, typed_sse
from impetus.api.schemas import ResponseFormat, ResponsesRequest
from impetus.api.validation import parse
from impetus.engine.request import SamplingParams, TokenEvent


class _FormatView:
    """The Responses API's `text.format` as chat's response_format, so both
    share one way to constrain output."""

    def __init__(self, body: ResponsesRequest):
        fmt = body.text.format if body.text else None
        self.response_format = None if fmt is None or fmt.type == "text" else ResponseFormat.model_validate(
            {"type": fmt.type, **({"json_schema": {"name": fmt.name, "schema": fmt.json_schema}}
                                  if fmt.type == "json_schema" else {})})
        self.tools = None
        self.tool_choice = None


def response_object(rid: str, created: int, body: ResponsesRequest, model: str, status: str, text: str | None,
                    message_id: str, usage: dict | None, incomplete: str | None = None) -> dict:
    output = []
    if text is not None:
        output.append({"type": "message", "id": message_id, "status": "completed" if status == "completed"
                       else "incomplete", "role": "assistant",
                       "content": [{"type": "output_text", "text": text, "annotations": []}]})
    fmt = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text else {"type": "text"}
    return {
        "id": rid, "object": "response", "created_at": created, "status": status, "model": model,
        "output": output, "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature, "top_p": body.top_p, "parallel_tool_calls": True,
        "tool_choice": body.tool_choice or "auto", "tools": [], "text": {"format": fmt},
        "metadata": body.metadata or {}, "usage": usage,
    }


def responses_usage(prompt_tokens: int, finish) -> dict:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": finish.cached_tokens},
            "output_tokens": finish.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + finish.completion_tokens}


class ResponsesResource(GenerationResource):
    route = "responses"
    id_prefix = "resp"

    def on_post(self, req, resp):
        body = generation.with_defaults(parse(ResponsesRequest, req.context.json), self.settings)
        engine = generation.engine_for(self.host, body.model)
        self.admit(req, resp, body, engine)
        tokenizer = engine.tokenizer
        prompt = render_chat(tokenizer, body.messages())
        max_tokens = generation.output_budget(resp, engine, self.settings, len(prompt), body.max_output_tokens,
                                              "input", "max_output_tokens")
        params = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                grammar=output_grammar(_FormatView(body), None, tokenizer))
        gen = self.generation(req, engine, [prompt], [params], prompt_tokens=len(prompt))
        rid, message_id, created = f"resp_{gen.id_suffix}", f"msg_{new_id_suffix()}", int(time.time())
        model = engine.loaded.name

        def final() -> dict:
            [choice] = gen.choices
            cut = choice.finish.reason == "length"
            return response_object(rid, created, body, model, "incomplete" if cut else "completed", choice.text,
                                   message_id, responses_usage(gen.prompt_tokens, choice.finish),
                                   "max_output_tokens" if cut else None)

        if not body.stream:
            gen.collect()  # an engine failure is a 500 in OpenAI's shape
            resp.media = final()
            return
        start_stream(resp, typed_sse(self._events(gen, body, rid, created, model, message_id, final)))

    def _events(self, gen, body, rid, created, model, message_id, final):
        sequence = itertools.count()

        def event(kind: str, **fields) -> dict:
            return {"type": kind, "sequence_number": next(sequence), **fields}

        started = response_object(rid, created, body, model, "in_progress", None, message_id, None)
        where = {"item_id": message_id, "output_index": 0, "content_index": 0}
        item = {"type": "message", "id": message_id, "status": "in_progress", "role": "assistant", "content": []}
        try:
            yield event("response.created", response=started)
            yield event("response.in_progress", response=started)
            yield event("response.output_item.added", output_index=0, item=item)
            yield event("response.content_part.added", **where,
                        part={"type": "output_text", "text": "", "annotations": []})
            for _, piece in gen.events():
                if isinstance(piece, TokenEvent):
                    if piece.text:
                        yield event("response.output_text.delta", **where, delta=piece.text, logprobs=[])
                    continue
                if piece.reason == "error":
                    yield event("error", code="engine_error", message="Generation failed inside the engine.",
                                param=None)
                    return
                if piece.text:
                    yield event("response.output_text.delta", **where, delta=piece.text, logprobs=[])
            done = final()
            message = done["output"][0]
            text = message["content"][0]["text"]
            yield event("response.output_text.done", **where, text=text, logprobs=[])
            yield event("response.content_part.done", **where, part=message["content"][0])
            yield event("response.output_item.done", output_index=0, item=message)
            yield event("response.completed" if done["status"] == "completed" else "response.incomplete",
                        response=done)
        finally:
            gen.close()
