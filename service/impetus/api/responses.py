"""POST /v1/responses, GET and DELETE /v1/responses/{id}: OpenAI's Responses
API, which Codex and the Agents SDK speak, as a face over the chat core: the
request becomes a chat request (`ResponsesRequest.to_chat`), so the template,
tools, constrained calls, sampling, engine, limits and billing are the same;
the output parser (api.output) splits reasoning, text and calls; only the
items and events are the Responses API's.

- Output items: `reasoning` (what a reasoning model thought), `message`,
  `function_call` (call_id, name, arguments; `namespace` when the function
  came in one).
- Streaming: response.created, response.in_progress, then per item
  output_item.added, its deltas (reasoning_text.delta; content_part.added,
  output_text.delta, output_text.done, content_part.done;
  function_call_arguments.delta and .done), output_item.done; then
  response.completed, or response.incomplete when max_output_tokens cut it.
- `store` (not false): the response is kept (gateway.responses) for
  previous_response_id, GET and DELETE, owned by the key that made it. With
  Redis down it goes out unstored, with an x-impetus-store header saying so.
"""

from __future__ import annotations

import itertools
import time
from contextlib import closing

from pydantic import ValidationError

from impetus.api.budget import with_defaults
from impetus.api.chat import prepare
from impetus.api.chat_schemas import ChatMessage
from impetus.api.errors import from_validation_error
from impetus.api.generation import KEEPALIVE, KEEPALIVE_S, Comment, new_id_suffix
from impetus.api.generation_resource import GenerationResource, engine_for, start_stream, typed_sse
from impetus.api.models import model_defaults
from impetus.api.output import CALL, END, ERROR, PING, QUEUED, REASONING, OutputParser, parsed_stream
from impetus.api.responses_schemas import ResponsesRequest
from impetus.api.validation import parse
from impetus.gateway.responses import StoreUnavailable
from impetus.web import APIError

STORE_HEADER = "x-impetus-store"


def owner_of(req) -> str:
    """Who a stored response belongs to: the key's hash; one owner when keys are off."""
    return req.context.account.owner


def not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param=param,
                    code="previous_response_not_found" if param else "response_not_found")


def store_unavailable(error: Exception) -> APIError:
    return APIError(503, f"The response store is unavailable ({error}). Please retry shortly.",
                    type="server_error", code="store_unavailable", headers={"Retry-After": "5"})


def response_object(rid: str, created: int, body: ResponsesRequest, model: str, status: str, output: list,
                    usage: dict | None, stored: bool, incomplete: str | None = None) -> dict:
    fmt = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text else {"type": "text"}
    tool_choice = body.tool_choice or "auto"
    return {
        "id": rid, "object": "response", "created_at": created, "status": status, "model": model,
        "output": output, "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "previous_response_id": body.previous_response_id,
        "temperature": body.temperature, "top_p": body.top_p,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "tool_choice": tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump(),
        "tools": [t.model_dump(exclude_none=True) for t in body.model_tools],
        "reasoning": body.reasoning.model_dump() if body.reasoning else {"effort": None, "summary": None},
        "text": {"format": fmt}, "store": stored, "truncation": body.truncation or "disabled",
        "metadata": body.metadata or {}, "user": body.user, "usage": usage,
    }


def responses_usage(prompt_tokens: int, finish, reasoning_tokens: int) -> dict:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": finish.cached_tokens},
            "output_tokens": finish.completion_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt_tokens + finish.completion_tokens}


class _Output:
    """A response's output items as they are made, and the events that
    announce them: a reasoning or message item is opened by its first text
    and closed when another kind of item follows or the response ends."""

    def __init__(self, event, namespace_of):
        self.event = event  # (type, **fields) -> a sequenced event
        self.namespace_of = namespace_of
        self.items: list[dict] = []
        self.open: dict | None = None

    def _where(self) -> dict:
        """Where the open item's deltas go (it becomes the next of the items)."""
        return {"item_id": self.open["id"], "output_index": len(self.items), "content_index": 0}

    def part(self, kind: str, text: str):
        if not text:
            return
        wanted = "reasoning" if kind == REASONING else "message"
        if self.open is None or self.open["type"] != wanted:
            yield from self.close()
            if wanted == "reasoning":
                self.open = {"type": "reasoning", "id": f"rs_{new_id_suffix()}", "summary": [],
                             "content": [{"type": "reasoning_text", "text": ""}]}
                yield self.event("response.output_item.added", output_index=len(self.items),
                                 item={**self.open, "content": [], "status": "in_progress"})
            else:
                self.open = {"type": "message", "id": f"msg_{new_id_suffix()}", "status": "in_progress",
                             "role": "assistant", "content": [{"type": "output_text", "text": "", "annotations": []}]}
                yield self.event("response.output_item.added", output_index=len(self.items),
                                 item={**self.open, "content": []})
                yield self.event("response.content_part.added", **self._where(), part=self.open["content"][0])
        self.open["content"][0]["text"] += text
        if wanted == "reasoning":
            yield self.event("response.reasoning_text.delta", **self._where(), delta=text)
        else:
            yield self.event("response.output_text.delta", **self._where(), delta=text, logprobs=[])

    def close(self, status: str = "completed"):
        if self.open is None:
            return
        item, where = self.open, self._where()
        self.open = None
        content = item["content"][0]
        if item["type"] == "reasoning":
            yield self.event("response.reasoning_text.done", **where, text=content["text"])
        else:
            item["status"] = status
            yield self.event("response.output_text.done", **where, text=content["text"], logprobs=[])
            yield self.event("response.content_part.done", **where, part=content)
        yield self.event("response.output_item.done", output_index=where["output_index"], item=item)
        self.items.append(item)

    def call(self, call: dict):
        yield from self.close()
        item = {"type": "function_call", "id": f"fc_{new_id_suffix()}", "call_id": call["id"],
                "name": call["function"]["name"], "arguments": call["function"]["arguments"], "status": "completed"}
        namespace = self.namespace_of(item["name"])
        if namespace:
            item["namespace"] = namespace
        index = len(self.items)
        yield self.event("response.output_item.added", output_index=index,
                         item={**item, "arguments": "", "status": "in_progress"})
        yield self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                         delta=item["arguments"])
        yield self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                         name=item["name"], arguments=item["arguments"])
        yield self.event("response.output_item.done", output_index=index, item=item)
        self.items.append(item)

    def as_turn(self) -> ChatMessage:
        """The output as the assistant turn a continuation renders (reasoning is not)."""
        text = "".join(i["content"][0]["text"] for i in self.items if i["type"] == "message")
        calls = [{"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
                 for i in self.items if i["type"] == "function_call"]
        return ChatMessage(role="assistant", content=text, tool_calls=calls or None)


class ResponsesResource(GenerationResource):
    route = "responses"
    id_prefix = "resp"

    def __init__(self, host, waker, settings, store=None, metrics=None):
        """`store`: the gateway's ResponseStore, None when the server runs without Redis."""
        super().__init__(host, waker, settings, None, metrics)
        self.store = store

    def on_post(self, req, resp):
        body = parse(ResponsesRequest, req.context.json)
        defaults = model_defaults(self.host, body.model)
        body = with_defaults(body, self.settings, defaults)
        owner = owner_of(req)
        history = self._history(body, owner)
        try:
            chat = with_defaults(body.to_chat(history), self.settings, defaults)
        except ValidationError as error:
            raise from_validation_error(error) from None
        engine = engine_for(self.host, body.model, req.context.account)
        self.admit(req, resp, body, engine)
        tokenizer = engine.tokenizer
        prompt, params, tool_mode, media = prepare(resp, engine, self.settings, chat, body.max_output_tokens,
                                                   "input", "max_output_tokens")
        store = body.store is not False and self._can_store(resp)
        gen = self.generation(req, resp, engine, [prompt], [params], prompt_tokens=len(prompt),
                              priority=chat.priority, media=media)
        parser = OutputParser.for_prompt(tokenizer, prompt, tool_mode, chat.tools)
        rid, created, model = f"resp_{gen.id_suffix}", int(time.time()), engine.loaded.name
        sequence = itertools.count()

        def event(kind: str, **fields) -> dict:
            return {"type": kind, "sequence_number": next(sequence), **fields}

        output = _Output(event, body.namespace_of)

        def final(finish) -> dict:
            cut = finish.reason == "length"
            response = response_object(rid, created, body, model, "incomplete" if cut else "completed",
                                       output.items, responses_usage(gen.prompt_tokens, finish,
                                                                     parser.reasoning_tokens),
                                       store, "max_output_tokens" if cut else None)
            if store:  # the conversation so far, less the instructions (not carried over)
                turns = chat.messages[1:] if body.instructions else chat.messages
                self.store.save(rid, owner, {
                    "response": response, "input": _input_items(body),
                    "turns": [m.model_dump(exclude_none=True) for m in [*turns, output.as_turn()]]})
            return response

        started = response_object(rid, created, body, model, "in_progress", [], None, store)
        events = self._events(gen, parser, output, event, started, final)
        if body.stream:
            start_stream(resp, typed_sse(events))
            return
        with closing(events):
            for item in events:
                if isinstance(item, Comment):  # a queue note or keep-alive: for streams only
                    continue
                if item["type"] == "error":
                    raise APIError(500, item["message"], type="server_error", code=item["code"])
                if item["type"] in ("response.completed", "response.incomplete"):
                    resp.media = item["response"]

    def _history(self, body: ResponsesRequest, owner: str) -> list[ChatMessage]:
        """The conversation previous_response_id continues (its input and output, without its instructions)."""
        if body.previous_response_id is None:
            return []
        if self.store is None:
            raise APIError(400, "This server keeps no responses (it runs without Redis), so there is no "
                           "previous response to continue; send the whole conversation as input.",
                           param="previous_response_id", code="store_disabled")
        try:
            record = self.store.load(body.previous_response_id, owner)
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        if record is None:
            raise not_found(body.previous_response_id, "previous_response_id")
        return [ChatMessage.model_validate(m) for m in record["turns"]]

    def _can_store(self, resp) -> bool:
        if self.store is not None and self.store.available():
            return True
        resp.set_header(STORE_HEADER, "not stored: " + ("redis is unavailable" if self.store is not None
                                                        else "this server runs without Redis"))
        return False

    def _events(self, gen, parser, output, event, started, final):
        try:
            yield event("response.created", response=started)
            yield event("response.in_progress", response=started)
            for kind, value in parsed_stream(gen, parser, heartbeat=KEEPALIVE_S):
                if kind == QUEUED:
                    yield value.comment()
                elif kind == PING:  # silent (a long prefill): traffic for the proxies
                    yield KEEPALIVE
                elif kind == ERROR:
                    yield event("error", code="engine_error", message="Generation failed inside the engine.",
                                param=None)
                elif kind == CALL:
                    yield from output.call(value)
                elif kind == END:
                    yield from output.close("incomplete" if value.reason == "length" else "completed")
                    done = final(value)
                    yield event("response.completed" if done["status"] == "completed" else "response.incomplete",
                                response=done)
                else:
                    yield from output.part(kind, value)
        finally:
            gen.close()


def _input_items(body: ResponsesRequest) -> list[dict]:
    if isinstance(body.input, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": body.input}]}]
    return [item.model_dump(exclude_none=True) for item in body.input]


def _stored(store, req, response_id: str) -> dict:
    """The stored record of the key's response; 404 for one it did not make."""
    if store is None:
        raise not_found(response_id)
    try:
        record = store.load(response_id, owner_of(req))
    except StoreUnavailable as error:
        raise store_unavailable(error) from None
    if record is None:
        raise not_found(response_id)
    return record


class ResponseResource:
    """GET and DELETE /v1/responses/{response_id}: a stored response, for the key that made it."""

    def __init__(self, store=None):
        self.store = store

    def on_get(self, req, resp, response_id):
        resp.media = _stored(self.store, req, response_id)["response"]

    def on_delete(self, req, resp, response_id):
        _stored(self.store, req, response_id)
        try:
            self.store.delete(response_id, owner_of(req))
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
        resp.media = {"id": response_id, "object": "response", "deleted": True}


class ResponseInputItemsResource:
    """GET /v1/responses/{response_id}/input_items: what the stored response was asked."""

    def __init__(self, store=None):
        self.store = store

    def on_get(self, req, resp, response_id):
        items = _stored(self.store, req, response_id)["input"]
        resp.media = {"object": "list", "data": items, "first_id": None, "last_id": None, "has_more": False}
