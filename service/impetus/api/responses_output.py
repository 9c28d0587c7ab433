"""A Responses API answer's output items as they are made, and the events that announce them.

A reasoning or message item is opened by its first text and closed when
another kind of item follows or the response ends; a function call is one
item; a `file_search_call` (api.file_search) is announced, searched and
closed in place, and the message after it carries its citations
(`file_citation` annotations, each announced by
response.output_text.annotation.added before the text is done).
"""

from __future__ import annotations

from impetus.api.chat_schemas import ChatMessage
from impetus.api.generation import new_id_suffix
from impetus.api.output import REASONING


class Output:
    """A response's output items as they are made, and the events that
    announce them: a reasoning or message item is opened by its first text
    and closed when another kind of item follows or the response ends."""

    def __init__(self, event, namespace_of):
        self.event = event  # (type, **fields) -> a sequenced event
        self.namespace_of = namespace_of
        self.items: list[dict] = []
        self.open: dict | None = None
        self.cite = None  # text -> the annotations of a message after a search

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
            for number, annotation in enumerate(self.cite(content["text"]) if self.cite else []):
                content["annotations"].append(annotation)
                yield self.event("response.output_text.annotation.added", **where, annotation_index=number,
                                 annotation=annotation)
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

    def file_search(self, searcher, call: dict, chat):
        """Announce a search, run it, close its item; the results (for the model) are the return value."""
        yield from self.close()
        index, item_id = len(self.items), f"fs_{new_id_suffix()}"
        yield self.event("response.output_item.added", output_index=index,
                         item=searcher.item(item_id, [], None, "in_progress"))
        yield self.event("response.file_search_call.in_progress", output_index=index, item_id=item_id)
        yield self.event("response.file_search_call.searching", output_index=index, item_id=item_id)
        queries, results = searcher.search(call, chat)
        yield self.event("response.file_search_call.completed", output_index=index, item_id=item_id)
        item = searcher.item(item_id, queries, results, "completed")
        yield self.event("response.output_item.done", output_index=index, item=item)
        self.items.append(item)
        self.cite = searcher.citations
        return results
