"""Schemas of Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens).

Strict like the OpenAI schemas: a field Anthropic does not document is a 400
naming it. Fields Anthropic documents that mean nothing here (`thinking`,
`output_config`, `context_management`, `service_tier`, `cache_control` on
blocks, `metadata`, ...) are accepted and ignored: Claude Code sends them on
every request. A request becomes a chat completion request (`to_chat`), so
the Messages API is a face over the same core: template, tools, constrained
calls, sampling, engine, billing.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, TypeAdapter, field_validator

from impetus.api.chat_schemas import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionName,
    ImagePart,
    NamedToolChoice,
    OutputTokens,
    TextPart,
    Tool,
    effort_arguments,
)
from impetus.api.schema_base import Priority, RequestModel, ResponseModel
from impetus.web import bad_request


class CacheControl(ResponseModel):
    """{"type": "ephemeral", "ttl": "1h"}: accepted; the prefix cache is automatic here."""


class _Cacheable(RequestModel):
    """What a request, its content blocks and its tools may carry: a cache breakpoint, accepted and ignored."""

    cache_control: CacheControl | None = None


class TextBlock(_Cacheable):
    type: Literal["text"]
    text: str
    citations: list | None = None


class ImageBlock(_Cacheable):
    type: Literal["image", "document"]
    source: dict
    title: str | None = None
    context: str | None = None
    citations: dict | None = None

    def part(self, where: str) -> ImagePart:
        """As a chat image part: base64 as a data URL, a URL as it is."""
        if self.type == "document":
            raise bad_request("Document input is not supported by this server's models.", param=where)
        kind = self.source.get("type")
        if kind == "base64" and isinstance(self.source.get("data"), str):
            media_type = self.source.get("media_type") or "image/png"
            return ImagePart.at(f"data:{media_type};base64,{self.source['data']}", where)
        if kind == "url" and isinstance(self.source.get("url"), str):
            return ImagePart.at(self.source["url"], where)
        raise bad_request("An image's source must be {\"type\": \"base64\", \"media_type\", \"data\"} or "
                          "{\"type\": \"url\", \"url\"}.", param=f"{where}.source")


class ToolUseBlock(_Cacheable):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: FunctionName
    input: dict
    caller: dict | None = None
    toolset_name: str | None = None


class ToolResultBlock(_Cacheable):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: Union[str, list[Union[TextBlock, ImageBlock]], None] = None
    is_error: bool = False
    toolset_name: str | None = None

    def chat_content(self, where: str) -> str | list:
        """Its text, or its parts when it holds images (a screenshot Claude Code read)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if not any(isinstance(b, ImageBlock) for b in self.content):
            return "".join(b.text for b in self.content)
        return [b.part(f"{where}.content.{i}") if isinstance(b, ImageBlock) else TextPart(type="text", text=b.text)
                for i, b in enumerate(self.content)]


class ThinkingBlock(RequestModel):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(RequestModel):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[Union[TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock, RedactedThinkingBlock],
                  Field(discriminator="type")]


class Message(RequestModel):
    # Claude Code may put a "system" turn in the middle of the conversation.
    role: Literal["user", "assistant", "system"]
    content: Union[str, list[Block]]


class CustomTool(_Cacheable):
    type: Literal["custom"] | None = None
    name: FunctionName
    description: str | None = None
    input_schema: dict
    strict: bool | None = None
    # Tool-search and programmatic-calling hints: nothing to do here.
    defer_loading: bool | None = None
    eager_input_streaming: bool | None = None
    input_examples: list | None = None
    allowed_callers: list | None = None


_CUSTOM_TOOL = TypeAdapter(CustomTool)


class ToolChoice(RequestModel):
    type: Literal["auto", "any", "tool", "none"]
    name: FunctionName | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(RequestModel):
    user_id: str | None = None


class Thinking(RequestModel):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None
    display: str | None = None


BILLING_HEADER = "x-anthropic-billing-header:"


def billing_header(text: str) -> bool:
    """Claude Code's first system block, `x-anthropic-billing-header:
    cc_version=2.1.332.8d3; cc_entrypoint=sdk-cli;`: metadata for Anthropic's
    billing, not instructions. Its last three characters follow the first
    question asked (measured: "What does this project do?" gave 8d3 for two
    users, "List the files please" 307), so left in it makes two sessions'
    prompts part at their 47th character and nothing after it is shared.
    Dropped unless IMPETUS_KEEP_BILLING_HEADER=true."""
    return text.startswith(BILLING_HEADER)


class MessagesCountRequest(_Cacheable):
    """POST /v1/messages/count_tokens: the body of a message request, less max_tokens."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: Union[str, list[TextBlock], None] = None
    # Server tools (web search, code execution, ...) cannot run here: they are
    # dropped from what the model sees, so an agent offering them still works.
    tools: list[dict] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    # Documented by Anthropic (the API and its betas), no meaning here:
    # accepted and ignored (and cache_control, from _Cacheable: the prefix cache is automatic).
    output_config: dict | None = None
    output_format: dict | None = None
    context_management: dict | None = None
    compaction: dict | None = None
    mcp_servers: list | None = None
    container: Union[str, dict, None] = None
    speed: Literal["standard", "fast"] | None = None
    diagnostics: dict | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None

    @field_validator("tools")
    @classmethod
    def _custom_tools(cls, value):
        if value is None:
            return None
        tools = []
        for tool in value:
            if tool.get("type") in (None, "custom"):
                tools.append(_CUSTOM_TOOL.validate_python(tool))
        return tools

    def chat_messages(self, keep_billing_header: bool = False) -> list[ChatMessage]:
        """The conversation as chat completions' messages: tool_use blocks become
        tool_calls, tool_result blocks tool messages; thinking is not rendered.
        Claude Code's billing header block is left out (`billing_header`)."""
        out = []
        blocks = [TextBlock(type="text", text=self.system)] if isinstance(self.system, str) else self.system or []
        system = "".join(b.text for b in blocks if keep_billing_header or not billing_header(b.text))
        if system:
            out.append(ChatMessage(role="system", content=system))
        for number, message in enumerate(self.messages):
            if isinstance(message.content, str):
                out.append(ChatMessage(role=message.role, content=message.content))
                continue
            text, calls, parts = "", [], []
            for index, block in enumerate(message.content):
                if isinstance(block, ImageBlock):
                    parts += [TextPart(type="text", text=text)] if text else []
                    parts.append(block.part(f"messages.{number}.content.{index}"))
                    text = ""
                elif isinstance(block, TextBlock):
                    text += block.text
                elif isinstance(block, ToolUseBlock):
                    calls.append({"id": block.id, "type": "function",
                                  "function": {"name": block.name, "arguments": json.dumps(block.input)}})
                elif isinstance(block, ToolResultBlock):
                    result = block.chat_content(f"messages.{number}.content.{index}")
                    if block.is_error:
                        result = f"Error: {result}" if isinstance(result, str) else [
                            TextPart(type="text", text="Error: "), *result]
                    out.append(ChatMessage(role="tool", tool_call_id=block.tool_use_id, content=result))
            if calls and message.role != "assistant":
                raise bad_request("Only assistant messages may contain tool_use blocks.",
                                  param=f"messages.{number}.content")
            if parts:
                out.append(ChatMessage(role=message.role, content=parts + ([TextPart(type="text", text=text)]
                                                                           if text else []), tool_calls=calls or None))
            elif text or calls or not message.content:
                out.append(ChatMessage(role=message.role, content=text, tool_calls=calls or None))
        return out

    def effort(self) -> str | None:
        """thinking as a reasoning effort: disabled is "none" (a `<think>`
        template's thinking off; gpt-oss's lowest level); a budget of under
        2,048 tokens "low", under 16,384 "medium", more "high"."""
        if not self.thinking:
            return None
        if self.thinking.type == "disabled":
            return "none"
        budget = self.thinking.budget_tokens
        return None if budget is None else "low" if budget < 2048 else "medium" if budget < 16384 else "high"

    def template_kwargs(self) -> dict | None:
        return effort_arguments(self.effort()) or None

    def chat_tools(self) -> tuple[list[Tool] | None, Any]:
        tools = [Tool(type="function", function={"name": t.name, "description": t.description,
                                                 "parameters": t.input_schema}) for t in self.tools or []]
        choice = self.tool_choice
        if not tools or choice is None or choice.type == "auto":
            return tools or None, None
        if choice.type == "none":
            return tools, "none"
        if choice.type == "any":
            return tools, "required"
        if choice.name not in {t.function.name for t in tools}:
            raise bad_request(f"tool_choice names '{choice.name}', which is not among the tools.",
                              param="tool_choice.name")
        return tools, NamedToolChoice(type="function", function={"name": choice.name})


class MessagesRequest(MessagesCountRequest):
    """POST /v1/messages."""

    sampling_names: ClassVar[dict] = {"stop": "stop_sequences"}  # api.budget.with_defaults
    max_tokens: OutputTokens
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)  # Claude Code sends none
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = Field(default=None, max_length=4)
    metadata: Metadata | None = None
    service_tier: str | None = None
    inference_geo: str | None = None
    billing_policy: dict | None = None
    fallbacks: Any = None
    fallback_credit_token: Any = None
    thread: dict | None = None
    priority: Priority = None

    def to_chat(self, keep_billing_header: bool = False) -> ChatCompletionRequest:
        """The same request as chat completions take it."""
        tools, tool_choice = self.chat_tools()
        return ChatCompletionRequest(
            model=self.model, messages=self.chat_messages(keep_billing_header), max_tokens=self.max_tokens,
            temperature=self.temperature, top_p=self.top_p or 1.0, top_k=self.top_k or 0,
            stop=[s for s in self.stop_sequences or [] if s], tools=tools, tool_choice=tool_choice,
            reasoning_effort=self.effort(), priority=self.priority)


# -- responses (documented in /openapi.json) -----------------------------------


class MessageResponse(ResponseModel):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[dict]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None = None
    usage: dict


class MessageStreamEvent(ResponseModel):
    type: str


class TokenCount(ResponseModel):
    input_tokens: int


class AnthropicErrorDetail(ResponseModel):
    type: str
    message: str


class AnthropicError(ResponseModel):
    type: Literal["error"]
    error: AnthropicErrorDetail
