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

from impetus.api import file_search
from impetus.api.budget import with_defaults
from impetus.api.chat import prepare
from impetus.api.chat_schemas import ChatMessage
from impetus.api.errors import from_validation_error
from impetus.api.generation import KEEPALIVE, KEEPALIVE_S, Comment
from impetus.api.generation_resource import GenerationResource, engine_for, start_stream, typed_sse
from impetus.api.models import model_defaults
from impetus.api.output import CALL, END, ERROR, PING, QUEUED, OutputParser, parsed_stream
from impetus.api.responses_output import Output
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
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or []],
        "reasoning": body.reasoning.model_dump() if body.reasoning else {"effort": None, "summary": None},
        "text": {"format": fmt}, "store": stored, "truncation": body.truncation or "disabled",
        "metadata": body.metadata or {}, "user": body.user, "usage": usage,
    }


def responses_usage(prompt_tokens: int, finish, reasoning_tokens: int, earlier_output: int = 0) -> dict:
    """`earlier_output`: what the rounds before the last generated (a call to file_search)."""
    output = finish.completion_tokens + earlier_output
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": finish.cached_tokens},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt_tokens + output}


class ResponsesResource(GenerationResource):
    route = "responses"
    id_prefix = "resp"

    def __init__(self, host, waker, settings, store=None, metrics=None, documents=None):
        """`store`: the gateway's ResponseStore, None when the server runs without Redis;
        `documents`: the vector stores file_search reads."""
        super().__init__(host, waker, settings, None, metrics)
        self.store = store
        self.documents = documents

    def on_post(self, req, resp):
        body = parse(ResponsesRequest, req.context.json)
        defaults = model_defaults(self.host, body.model)
        body = with_defaults(body, self.settings, defaults)
        owner = owner_of(req)
        history = self._history(body, owner)
        engine = engine_for(self.host, body.model, req.context.account)
        searcher = self._searcher(req, body, engine)
        try:
            chat = with_defaults(body.to_chat(history, file_search.FUNCTION if searcher else None), self.settings,
                                 defaults)
        except ValidationError as error:
            raise from_validation_error(error) from None
        self.admit(req, resp, body, engine)
        store = body.store is not False and self._can_store(resp)
        rounds = [self._round(req, resp, engine, chat, body.max_output_tokens)]  # (chat, gen, parser); a second
        # after a search, within what the first left of max_output_tokens
        rid, created, model = f"resp_{rounds[0][1].id_suffix}", int(time.time()), engine.loaded.name
        sequence = itertools.count()

        def event(kind: str, **fields) -> dict:
            return {"type": kind, "sequence_number": next(sequence), **fields}

        output = Output(event, body.namespace_of)

        def final(finish) -> dict:
            cut = finish.reason == "length"
            last_chat, _, parser = rounds[-1]
            earlier = sum(g.completion_tokens for _, g, _ in rounds[:-1])
            usage = responses_usage(sum(g.prompt_tokens for _, g, _ in rounds), finish, parser.reasoning_tokens,
                                    earlier)
            response = response_object(rid, created, body, model, "incomplete" if cut else "completed",
                                       output.items, usage, store, "max_output_tokens" if cut else None)
            if store:  # the conversation so far, less the instructions (not carried over)
                turns = last_chat.messages[1:] if body.instructions else last_chat.messages
                self.store.save(rid, owner, {
                    "response": response, "input": _input_items(body),
                    "turns": [m.model_dump(exclude_none=True) for m in [*turns, output.as_turn()]]})
            return response

        def after_search(call: dict):
            """The search's events; then the round that answers with its results."""
            last_chat = rounds[-1][0]
            results = yield from output.file_search(searcher, call, last_chat)
            follow = with_defaults(searcher.continued(last_chat, call, results, body), self.settings, defaults)
            left = body.max_output_tokens and max(1, body.max_output_tokens - rounds[0][1].completion_tokens)
            rounds.append(self._round(req, resp, engine, follow, left))

        started = response_object(rid, created, body, model, "in_progress", [], None, store)
        events = self._events(rounds, output, event, started, final, after_search if searcher else None)
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

    def _searcher(self, req, body: ResponsesRequest, engine):
        tool = body.file_search
        if tool is None:
            return None
        if self.documents is None:
            raise APIError(400, "This server keeps no documents.", param="tools", code="file_search_unavailable")
        tokenizer = engine.tokenizer
        searcher = file_search.FileSearch(self.documents, req.context.account, tool, body.include,
                                          engine.loaded.context_length,
                                          lambda text: len(tokenizer.encode(text, add_special_tokens=False)))
        searcher.check()
        return searcher

    def _round(self, req, resp, engine, chat, max_output_tokens: int | None):
        """(chat, its generation, its parser): one pass of the model over the conversation so far."""
        prompt, params, tool_mode, media = prepare(resp, engine, self.settings, chat, max_output_tokens,
                                                   "input", "max_output_tokens")
        gen = self.generation(req, resp, engine, [prompt], [params], prompt_tokens=len(prompt),
                              priority=chat.priority, media=media)
        return chat, gen, OutputParser.for_prompt(engine.tokenizer, prompt, tool_mode, chat.tools)

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

    def _events(self, rounds, output, event, started, final, after_search):
        """Every round's events in order: a call to file_search (when the server runs it)
        is searched in place and answered by the next round."""
        try:
            yield event("response.created", response=started)
            yield event("response.in_progress", response=started)
            while True:
                _, gen, parser = rounds[-1]
                search = None
                for kind, value in parsed_stream(gen, parser, heartbeat=KEEPALIVE_S):
                    if kind == QUEUED:
                        yield value.comment()
                    elif kind == PING:  # silent (a long prefill): traffic for the proxies
                        yield KEEPALIVE
                    elif kind == ERROR:
                        yield event("error", code="engine_error", message="Generation failed inside the engine.",
                                    param=None)
                    elif kind == CALL and after_search and len(rounds) == 1 and \
                            value["function"]["name"] == file_search.NAME:
                        search = value
                        break
                    elif kind == CALL:
                        yield from output.call(value)
                    elif kind == END:
                        yield from output.close("incomplete" if value.reason == "length" else "completed")
                        done = final(value)
                        yield event("response.completed" if done["status"] == "completed" else
                                    "response.incomplete", response=done)
                    else:
                        yield from output.part(kind, value)
                if search is None:
                    return
                gen.close()
                yield from after_search(search)
        finally:
            for _, gen, _ in rounds:
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
