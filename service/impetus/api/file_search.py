"""The Responses API's `file_search`, run by the server as OpenAI's hosted tool is.

The model sees one function, `file_search(query)`. When it calls it, the
response does not end with a function_call for the client: the server
searches the tool's vector stores (documents.search, as the key that made the
request: another key's store is a 404 naming it), puts a `file_search_call`
item in the output (its `results` only when `include` asks for
`file_search_call.results`), and continues the same response with the
results as the tool's answer, in which the model may not search again. The
answer's message carries a `file_citation` annotation for each file the
results came from, in their order.

Queries: the model's own, and the user's last message beside it (fused by
rank): a small model's query is often poor, and the question is the best
query there is. Results go to the model as numbered excerpts with their file
names, at most `max_num_results` and at most ROOM_FRACTION of the model's
context.
"""

from __future__ import annotations

from impetus.api.chat_schemas import ChatMessage, Tool
from impetus.api.documents_schemas import FileSearchTool

NAME = "file_search"
ROOM_FRACTION = 0.5
FUNCTION = Tool(type="function", function={
    "name": NAME,
    "description": "Search the user's files (their documents, runbooks and notes) for passages that answer "
                   "a question. Use it whenever the answer may be in their files.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string", "description": "what to look for"}},
                   "required": ["query"]},
})
RESULTS = "file_search_call.results"


def the_query(call: dict) -> str:
    import json

    try:
        arguments = json.loads(call["function"]["arguments"] or "{}")
    except ValueError:
        arguments = {}
    query = arguments.get("query") if isinstance(arguments, dict) else None
    return query.strip() if isinstance(query, str) else ""


def last_user_text(chat) -> str:
    for message in reversed(chat.messages):
        if message.role == "user":
            return message.content if isinstance(message.content, str) else " ".join(
                getattr(part, "text", "") or "" for part in message.content or [])
    return ""


class FileSearch:
    """One response's searches: who searches, in which stores, and what came back."""

    def __init__(self, documents, account, tool: FileSearchTool, include: list[str] | None, context_tokens: int,
                 count_tokens):
        self.documents, self.account, self.tool = documents, account, tool
        self.include_results = RESULTS in (include or [])
        self.room = int(context_tokens * ROOM_FRACTION)
        self.count_tokens = count_tokens  # text -> the chat model's tokens
        self.files: list[tuple[str, str]] = []  # (file_id, filename) cited, in order

    def check(self) -> None:
        """Before the model runs: every store is the key's and searchable (404 / 400 naming it)."""
        for index, store_id in enumerate(self.tool.vector_store_ids):
            self.documents.stores.searchable(self.account.owner, store_id, f"tools.file_search.vector_store_ids[{index}]")

    def search(self, call: dict, chat) -> tuple[list[str], list[dict]]:
        queries = [q for q in dict.fromkeys([the_query(call), last_user_text(chat).strip()]) if q][:2] or ["*"]
        ranking = self.tool.ranking_options
        results, tokens = self.documents.search.search(
            list(self.tool.vector_store_ids), queries, self.tool.filters.model_dump() if self.tool.filters else None,
            self.tool.max_num_results, ranking.ranker if ranking else "auto", ranking.score_threshold if ranking else 0)
        self.account.charge(self.documents.model_name, tokens, 0)
        kept, used = [], 0
        for result in results:
            cost = self.count_tokens(result["content"][0]["text"]) + 16
            if kept and used + cost > self.room:
                break
            kept.append(result)
            used += cost
        for result in kept:
            if (result["file_id"], result["filename"]) not in self.files:
                self.files.append((result["file_id"], result["filename"]))
        return queries, kept

    def item(self, item_id: str, queries: list[str], results: list[dict] | None, status: str) -> dict:
        shown = None
        if results is not None and self.include_results:
            shown = [{"file_id": r["file_id"], "filename": r["filename"], "score": r["score"],
                      "attributes": r["attributes"], "text": r["content"][0]["text"]} for r in results]
        return {"type": "file_search_call", "id": item_id, "status": status, "queries": queries, "results": shown}

    @staticmethod
    def answer(results: list[dict]) -> str:
        """What the model reads as the search's result."""
        if not results:
            return "No passage in the files matches."
        return "\n\n".join(f"[{n}] {r['filename']}:\n{r['content'][0]['text']}" for n, r in enumerate(results, 1))

    def continued(self, chat, call: dict, results: list[dict], body):
        """The chat request that goes on after the search: the call and its answer, no more searching."""
        turns = [ChatMessage(role="assistant", content="", tool_calls=[call]),
                 ChatMessage(role="tool", tool_call_id=call["id"], content=self.answer(results))]
        tools, tool_choice = body.chat_tools(None)
        return chat.model_copy(update={"messages": [*chat.messages, *turns], "tools": tools,
                                       "tool_choice": tool_choice})

    def citations(self, text: str) -> list[dict]:
        return [{"type": "file_citation", "index": len(text), "file_id": file_id, "filename": filename}
                for file_id, filename in self.files]
