"""Ollama's API (docs/api.md of ollama/ollama) as requests that turn themselves
into chat requests, as the Messages API's do.

- `/api/chat`: messages (with base64 `images` and `tool_calls` whose
  arguments are objects), `tools` (OpenAI's function shape, as Ollama takes
  them), `format` ("json" or a JSON schema: constrained output), `think`
  (false: thinking off; "low"/"medium"/"high": gpt-oss's levels), `options`
  (sampling, `num_predict`, `stop`, `seed`), `keep_alive`, `stream` (true
  unless said: NDJSON).
- `/api/generate`: `prompt` with `system` and `images` through the chat
  template, or as it is with `raw`; `suffix`: fill in the middle.
- `/api/embed`, `/api/show`, `/api/tags`, `/api/ps`, `/api/version`.

Top-level fields are strict (a typo is a 400 naming it); `options` takes
Ollama's whole set and uses the sampling ones: the rest (`num_ctx`,
`num_gpu`, `num_thread`, `mirostat`...) are the runner's business here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from impetus.api.chat_schemas import ChatCompletionRequest, ChatMessage, ImagePart, ResponseFormat, TextPart, Tool
from impetus.api.schema_base import RequestModel, ResponseModel

_TEXT = 4_000_000


class Options(BaseModel):
    """Ollama's runtime options: the sampling ones are used, the others accepted."""

    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    num_predict: int | None = Field(default=None, ge=-2, description="-1 or -2: as long as the context allows")
    stop: Union[str, Annotated[list[str], Field(max_length=16)], None] = None
    # Open WebUI sends OpenAI's frequency_penalty (-2..2, 0: none) as repeat_penalty; Ollama takes any
    # number. Here a value above 0 is the penalty, and 0 or below means none.
    repeat_penalty: float | None = Field(default=None, ge=-2.0, le=10.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    def sampling(self) -> dict:
        """The chat request's fields that these options set (only those: the model's defaults fill the rest)."""
        out = {k: getattr(self, k) for k in ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
                                              "frequency_penalty") if getattr(self, k) is not None}
        if self.repeat_penalty is not None:
            out["repetition_penalty"] = self.repeat_penalty if self.repeat_penalty > 0 else 1.0
        if self.stop is not None:
            out["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop[:4]
        if self.num_predict is not None and self.num_predict > 0:
            out["max_tokens"] = self.num_predict
        return out


class OllamaCallFunction(RequestModel):
    name: str = Field(min_length=1, max_length=256)
    arguments: dict = {}
    index: int | None = None


class OllamaCall(RequestModel):
    function: OllamaCallFunction
    id: str | None = None
    type: str | None = None


class OllamaMessage(RequestModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(default="", max_length=_TEXT)
    images: Annotated[list[str], Field(max_length=32)] | None = None
    tool_calls: list[OllamaCall] | None = None
    thinking: str | None = None  # a previous answer's: not rendered again
    tool_name: str | None = None


Think = Union[bool, Literal["low", "medium", "high"], None]
Format = Union[Literal["json", ""], dict, None]
KeepAlive = Union[str, float, int, None]


def _images(images: list[str] | None, where: str) -> list[ImagePart]:
    """Ollama's images (base64, no data: prefix) as chat image parts."""
    return [ImagePart.at(f"data:image/png;base64,{image}", f"{where}.images.{i}") for i, image in
            enumerate(images or [])]


def _response_format(fmt: Format) -> ResponseFormat | None:
    if not fmt:
        return None
    if fmt == "json":
        return ResponseFormat.model_validate({"type": "json_object"})
    return ResponseFormat.model_validate({"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}})


def _effort(think: Think) -> str | None:
    if think is False:
        return "none"
    return think if isinstance(think, str) else None


class _Common(RequestModel):
    model: str = Field(min_length=1, max_length=256)
    stream: bool = True
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    think: Think = None

    def chat_request(self, messages: list[ChatMessage], tools=None) -> ChatCompletionRequest:
        sampling = (self.options or Options()).sampling()
        return ChatCompletionRequest(model=self.model, messages=messages, tools=tools or None,
                                     response_format=_response_format(self.format),
                                     reasoning_effort=_effort(self.think), **sampling)


class OllamaChatRequest(_Common):
    """POST /api/chat."""

    messages: Annotated[list[OllamaMessage], Field(max_length=10_000)] = []
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None

    def to_chat(self) -> ChatCompletionRequest:
        out, calls = [], {}
        for i, m in enumerate(self.messages):
            content: Any = m.content
            if m.images:
                content = [TextPart(type="text", text=m.content), *_images(m.images, f"messages.{i}")]
            if m.role == "assistant" and m.tool_calls:
                made = []
                for j, call in enumerate(m.tool_calls):
                    call_id = call.id or f"call_{i}_{j}"
                    calls.setdefault(call.function.name, []).append(call_id)
                    made.append({"id": call_id, "type": "function", "function": {
                        "name": call.function.name, "arguments": _json(call.function.arguments)}})
                out.append(ChatMessage(role="assistant", content=content or None, tool_calls=made))
            elif m.role == "tool":  # Ollama names the function, not the call: the latest call of that name
                named = calls.get(m.tool_name or "") or [c for ids in calls.values() for c in ids]
                out.append(ChatMessage(role="tool", content=content, tool_call_id=named[-1] if named else "call_0"))
            else:
                out.append(ChatMessage(role=m.role, content=content))
        if not out:
            out = [ChatMessage(role="user", content="")]
        return self.chat_request(out, self.tools)


class OllamaGenerateRequest(_Common):
    """POST /api/generate."""

    prompt: str = Field(default="", max_length=_TEXT)
    suffix: str | None = Field(default=None, max_length=_TEXT)
    system: str | None = Field(default=None, max_length=_TEXT)
    images: Annotated[list[str], Field(max_length=32)] | None = None
    raw: bool = False
    template: str | None = None  # Go templates are not run here: only an empty one is accepted
    context: list[int] | None = None  # deprecated by Ollama: accepted, not used

    def to_chat(self) -> ChatCompletionRequest:
        messages = [ChatMessage(role="system", content=self.system)] if self.system else []
        content: Any = self.prompt
        if self.images:
            content = [TextPart(type="text", text=self.prompt), *_images(self.images, "images")]
        return self.chat_request(messages + [ChatMessage(role="user", content=content)])


class OllamaEmbedRequest(RequestModel):
    """POST /api/embed (and the older /api/embeddings' `prompt`)."""

    model: str = Field(min_length=1, max_length=256)
    input: Union[str, Annotated[list[str], Field(min_length=1, max_length=2048)], None] = None
    prompt: str | None = None
    truncate: bool = True
    options: Options | None = None
    keep_alive: KeepAlive = None
    dimensions: int | None = Field(default=None, ge=1)


class OllamaShowRequest(RequestModel):
    """POST /api/show (`name` is what older clients send)."""

    model: str | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1)
    verbose: bool = False


def _json(arguments: dict) -> str:
    import json

    return json.dumps(arguments)


_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")


def keep_alive_seconds(value: KeepAlive) -> float | None:
    """Ollama's keep_alive ("5m", "1h", "30s", a number of seconds; negative:
    forever, 0: unload now) in seconds, None when not given; ValueError if unreadable."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    found = _DURATION.match(value.strip())
    if not found:
        raise ValueError(f"keep_alive {value!r} is not a duration such as 5m, 1h or 30s")
    number, unit = float(found.group(1)), found.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


# -- answers (described in /openapi.json; Ollama's clients read more fields than are listed) -----------------

class OllamaError(ResponseModel):
    error: str


class OllamaChatResponse(ResponseModel):
    model: str
    created_at: str
    message: dict
    done: bool
    done_reason: str | None = None


class OllamaGenerateResponse(ResponseModel):
    model: str
    created_at: str
    response: str
    done: bool
    done_reason: str | None = None


class OllamaEmbedResponse(ResponseModel):
    model: str | None = None
    embeddings: list[list[float]] | None = None
    embedding: list[float] | None = None  # /api/embeddings


class OllamaModelList(ResponseModel):
    models: list[dict]


class OllamaShowResponse(ResponseModel):
    parameters: str
    template: str
    details: dict
    model_info: dict
    capabilities: list[str]


class OllamaVersion(ResponseModel):
    version: str
