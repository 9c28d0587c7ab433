"""Schemas of OpenAI's Responses API (POST /v1/responses), as Codex and the
Agents SDK speak it, and how a request becomes a chat request (`to_chat`):
the same template, tools, constrained calls, sampling and engine as chat
completions.

- Input items: `message` (roles system, developer, user, assistant; text
  parts), `function_call` and `function_call_output` (a call and its result,
  as chat's tool_calls and tool messages), `reasoning` (accepted, not
  rendered: a template that knows no reasoning history has no place for it).
- Tools: `function`, and `namespace` (a named group of functions, which
  Codex sends for its sub-agent tools) flattened into functions; `file_search`
  over the key's vector stores, which the server runs (api.file_search). Built-in
  tools that cannot run here (`web_search`, `computer_use`,
  `code_interpreter`, `image_generation`, `mcp`, `custom`, ...) are dropped
  from what the model sees, so an agent offering them by default still works.
- Documented fields with no meaning here (`include`, `reasoning.summary`,
  `prompt_cache_key`: the prefix cache is automatic, `client_metadata`,
  `safety_identifier`, `service_tier`, `text.verbosity`, `truncation`) are
  accepted and ignored; an undocumented field is a 400 naming it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, PrivateAttr, StringConstraints, TypeAdapter, field_validator, model_validator

from impetus.api.chat_schemas import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionName,
    ImagePart,
    NamedToolChoice,
    OutputTokens,
    ResponseFormat,
    TextPart,
    Tool,
)
from impetus.api.documents_schemas import FileSearchTool, HostedToolChoice
from impetus.api.schema_base import OpenAIHints, Priority, RequestModel, ResponseModel, Temperature, TopP
from impetus.web import bad_request


class InputText(RequestModel):
    type: Literal["input_text", "output_text", "text"]
    text: str
    annotations: list | None = None
    logprobs: list | None = None


class Refusal(RequestModel):
    type: Literal["refusal"]
    refusal: str


class InputImage(RequestModel):
    """An image: `image_url` a data URL (or an allowed http(s) URL); `file_id`
    is not offered (there is no files API here)."""

    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None

    def part(self, where: str) -> ImagePart:
        if not self.image_url:
            raise bad_request("input_image needs an image_url (a data URL); file_id is not supported here.",
                              param=f"{where}.image_url")
        return ImagePart.at(self.image_url, where, self.detail)


class Media(RequestModel):
    """Files and audio: recognised, to be refused by name."""

    model_config = ConfigDict(extra="allow")
    type: Literal["input_file", "input_audio"]


Part = Annotated[Union[InputText, Refusal, InputImage, Media], Field(discriminator="type")]


class InputMessage(RequestModel):
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part]]
    id: str | None = None
    status: str | None = None
    phase: str | None = None  # Codex marks its assistant turns (commentary, final_answer)

    def text(self, where: str) -> str | list:
        """Its text, or its parts when it holds images."""
        if isinstance(self.content, str):
            return self.content
        media = next((p for p in self.content if isinstance(p, Media)), None)
        if media is not None:
            kind = media.type.removeprefix("input_").capitalize()
            raise bad_request(f"{kind} input is not supported by this server's models.", param=where)
        if any(isinstance(p, InputImage) for p in self.content):
            return [p.part(f"{where}.content.{i}") if isinstance(p, InputImage) else
                    TextPart(type="text", text=p.text if isinstance(p, InputText) else p.refusal)
                    for i, p in enumerate(self.content)]
        return "".join(p.text if isinstance(p, InputText) else p.refusal for p in self.content)


class FunctionCallItem(RequestModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: FunctionName
    arguments: str
    id: str | None = None
    status: str | None = None
    namespace: str | None = None


class FunctionCallOutputItem(RequestModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: Union[str, list[Part]]
    id: str | None = None
    status: str | None = None

    def text(self, where: str) -> str | list:
        if isinstance(self.output, str):
            return self.output
        return InputMessage(role="user", content=self.output).text(f"{where}.output")


class ReasoningItem(RequestModel):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list = Field(default_factory=list)
    content: list | None = None
    encrypted_content: str | None = None
    status: str | None = None


def _item_type(value) -> str:
    return value.get("type", "message") if isinstance(value, dict) else "message"


class FunctionTool(RequestModel):
    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None
    defer_loading: bool | None = None
    _namespace: str | None = PrivateAttr(default=None)  # the namespace it came in, if any


class NamespaceTool(RequestModel):
    type: Literal["namespace"]
    name: str = Field(min_length=1)
    description: str | None = None
    tools: list[FunctionTool]


_FUNCTION_TOOL = TypeAdapter(FunctionTool)
_NAMESPACE_TOOL = TypeAdapter(NamespaceTool)
_FILE_SEARCH_TOOL = TypeAdapter(FileSearchTool)


class FunctionChoice(RequestModel):
    type: Literal["function"]
    name: FunctionName


class AllowedTools(RequestModel):
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[dict]


class TextFormat(RequestModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")] | None = None
    json_schema: dict | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if self.type == "json_schema" and (self.json_schema is None or not self.name):
            raise ValueError("format 'json_schema' needs a name and a schema")
        return self


class TextOptions(RequestModel):
    format: TextFormat = Field(default_factory=TextFormat)
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(RequestModel):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(OpenAIHints):
    """POST /v1/responses."""

    model: str = Field(min_length=1)
    input: Union[Annotated[str, Field(min_length=1)], Annotated[list[dict], Field(min_length=1)]]
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    max_output_tokens: OutputTokens | None = None
    temperature: Temperature = None
    top_p: TopP = 1.0
    stream: bool = False
    text: TextOptions | None = None
    tools: list[dict] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], FunctionChoice, HostedToolChoice, AllowedTools,
                       None] = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    reasoning: Reasoning | None = None
    # Kept (in Redis) unless false, so previous_response_id can continue it.
    store: bool | None = None
    priority: Priority = None
    # Accepted and ignored (see the module's docstring), beside OpenAIHints'.
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    client_metadata: dict[str, Any] | None = None
    stream_options: dict | None = None
    background: Literal[False] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=0, description="not offered: 0 only")

    @field_validator("input")
    @classmethod
    def _items(cls, value):
        if isinstance(value, str):
            return value
        return [_validate_item(item) for item in value]

    @field_validator("tools")
    @classmethod
    def _runnable_tools(cls, value):
        """Function tools, namespaces flattened, file_search; other built-in tools dropped."""
        if value is None:
            return None
        tools = []
        for tool in value:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind == "file_search":
                if any(isinstance(t, FileSearchTool) for t in tools):
                    raise ValueError("file_search may be given once")
                tools.append(_FILE_SEARCH_TOOL.validate_python(tool))
            elif kind == "function":
                tools.append(_FUNCTION_TOOL.validate_python(tool))
            elif kind == "namespace":
                for function in _NAMESPACE_TOOL.validate_python(tool).tools:
                    function._namespace = tool["name"]
                    tools.append(function)
            elif not isinstance(kind, str):
                raise ValueError("each tool needs a type")
        return tools

    @property
    def model_tools(self) -> list[FunctionTool]:
        """The functions the client runs (file_search is the server's)."""
        return [t for t in self.tools or [] if isinstance(t, FunctionTool)]

    @property
    def file_search(self) -> FileSearchTool | None:
        return next((t for t in self.tools or [] if isinstance(t, FileSearchTool)), None)

    def namespace_of(self, name: str) -> str | None:
        for tool in self.model_tools:
            if tool.name == name:
                return tool._namespace
        return None

    def turns(self) -> list[ChatMessage]:
        """This request's input as chat messages (without the instructions)."""
        items = [InputMessage(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        out: list[ChatMessage] = []
        for number, item in enumerate(items):
            where = f"input.{number}"
            if isinstance(item, InputMessage):
                out.append(ChatMessage(role=item.role, content=item.text(where)))
            elif isinstance(item, FunctionCallItem):
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                try:
                    json.loads(item.arguments or "{}")
                except ValueError:
                    raise bad_request(f"function_call '{item.call_id}' has arguments that are not JSON.",
                                      param=f"{where}.arguments") from None
                last = out[-1] if out else None
                if last is not None and last.role == "assistant":  # calls after (or with) the answer's text
                    last.tool_calls = [*(last.tool_calls or []), call]
                else:
                    out.append(ChatMessage(role="assistant", content="", tool_calls=[call]))
            elif isinstance(item, FunctionCallOutputItem):
                out.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=item.text(where)))
        return out

    def chat_tools(self, search: Tool | None = None) -> tuple[list[Tool] | None, Any]:
        """The tools as chat takes them; `search`: file_search as the model sees it (a function),
        None once it has searched."""
        tools = [Tool(type="function", function={"name": t.name, "description": t.description,
                                                 "parameters": t.parameters}) for t in self.model_tools]
        choice = self.tool_choice
        if search is not None:
            tools.append(search)
            if isinstance(choice, HostedToolChoice):
                choice = FunctionChoice(type="function", name=search.function.name)
        elif isinstance(choice, HostedToolChoice) or (choice == "required" and not tools):
            choice = "auto"  # it has searched: now it answers
        if isinstance(choice, AllowedTools):
            allowed = {t.get("name") for t in choice.tools}
            tools = [t for t in tools if t.function.name in allowed]
            choice = choice.mode
        if not tools:
            return None, None
        if isinstance(choice, FunctionChoice):
            if choice.name not in {t.function.name for t in tools}:
                raise bad_request(f"tool_choice names '{choice.name}', which is not among the tools.",
                                  param="tool_choice.name")
            return tools, NamedToolChoice(type="function", function={"name": choice.name})
        return tools, choice


    def to_chat(self, history: list[ChatMessage] = (), search: Tool | None = None) -> ChatCompletionRequest:
        """The same request as chat completions take it; `history` is the
        conversation so far (previous_response_id's), instructions first as
        the system message (instructions are not carried over, as OpenAI);
        `search`: the file_search function, while the model may call it."""
        fmt = self.text.format if self.text else None
        response_format = None if fmt is None or fmt.type == "text" else ResponseFormat.model_validate(
            {"type": fmt.type, **({"json_schema": {"name": fmt.name, "schema": fmt.json_schema}}
                                  if fmt.type == "json_schema" else {})})
        system = [ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        tools, tool_choice = self.chat_tools(search)
        return ChatCompletionRequest(
            model=self.model, messages=system + list(history) + self.turns(), max_tokens=self.max_output_tokens,
            temperature=self.temperature, top_p=self.top_p, response_format=response_format, tools=tools,
            tool_choice=tool_choice, reasoning_effort=self.reasoning.effort if self.reasoning else None,
            priority=self.priority)


def _validate_item(value):
    kind = _item_type(value)
    model = _ITEM_TYPES.get(kind)
    if model is None:
        raise ValueError(f"input items of type '{kind}' are not supported here (message, function_call, "
                         "function_call_output and reasoning are)")
    return model.model_validate(value)


_ITEM_TYPES = {"message": InputMessage, "function_call": FunctionCallItem,
               "function_call_output": FunctionCallOutputItem, "reasoning": ReasoningItem}


# -- answers (described in /openapi.json) ---------------------------------------


class ResponseObject(ResponseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    model: str
    output: list[dict]
    usage: dict | None = None


class ResponseDeleted(ResponseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool


class ResponseEvent(ResponseModel):
    type: str
    sequence_number: int


class ResponseInputItemList(ResponseModel):
    """GET /v1/responses/{response_id}/input_items"""

    object: Literal["list"]
    data: list[dict]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
