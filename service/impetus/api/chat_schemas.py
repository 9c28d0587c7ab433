"""OpenAI's chat and text completions: the requests (POST /v1/chat/completions,
/v1/completions) and their answers and chunks. Both requests share the
sampling fields (`SamplingFields`) that the generation core turns into the
engine's sampling parameters; Responses and Messages build on `ChatMessage`,
`Tool` and `ResponseFormat`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import ConfigDict, Field, PrivateAttr, StringConstraints, ValidationInfo, field_validator, model_validator

from impetus.api.schema_base import (
    OpenAIHints,
    Penalty,
    Priority,
    Probability,
    RequestModel,
    ResponseModel,
    Temperature,
    TopP,
)


class StreamOptions(RequestModel):
    include_usage: bool = False


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class ImageURL(RequestModel):
    url: str = Field(min_length=1)
    # Accepted: the model's own processor decides an image's size and its number of tokens.
    detail: Literal["auto", "low", "high", "original"] | None = None


class ImagePart(RequestModel):
    """An image: a data URL (or, where the operator allows its host, an http(s) URL)."""

    type: Literal["image_url"]
    image_url: ImageURL
    # Where the client put it, when another protocol's face made this part (its error names that).
    _where: str | None = PrivateAttr(default=None)

    @classmethod
    def at(cls, url: str, where: str, detail: str | None = None) -> "ImagePart":
        part = cls(type="image_url", image_url=ImageURL(url=url, detail=detail))
        part._where = where
        return part


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


FunctionName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionCall(RequestModel):
    name: FunctionName
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(RequestModel):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the result of that call
    refusal: str | None = None
    # What an earlier answer reasoned (clients send it back): not rendered.
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self):
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def text(self, marker: str = "") -> str:
        """Its text; each image as `marker` (the text a vision model's processor expands)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text if isinstance(part, TextPart) else marker for part in self.content)


Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]  # OpenAI's reasoning levels
# -> gpt-oss's "Reasoning: low|medium|high" (its template's reasoning_effort)
_HARMONY_EFFORT = {"none": "low", "minimal": "low", "low": "low", "medium": "medium", "high": "high",
                   "xhigh": "high"}


def effort_arguments(effort: str | None) -> dict:
    """Template arguments for a reasoning effort: gpt-oss's `reasoning_effort`
    (its three levels); "none" also turns a `<think>` template's thinking off."""
    if effort is None:
        return {}
    return {"reasoning_effort": _HARMONY_EFFORT[effort], **({"enable_thinking": False} if effort == "none" else {})}


class _SamplingFields(OpenAIHints):
    model: str = Field(min_length=1)
    temperature: Temperature = None
    top_p: TopP = 1.0
    top_k: int = Field(default=0, ge=0, description="Impetus extension: 0 disables")
    min_p: Probability = Field(default=0.0, description="Impetus extension")
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = Field(default=None, validate_default=True)
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0, description="Impetus extension")
    # Keys are token ids (JSON object keys are strings); the pattern is in the schema too.
    logit_bias: dict[Annotated[str, StringConstraints(pattern=r"^-?[0-9]+$")],
                     Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = None
    priority: Priority = None
    store: bool | None = None  # accepted and ignored, as the hints

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value):
        if value:
            for key in value:
                if not key.lstrip("-").isdigit():
                    raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        return value


class FunctionDefinition(RequestModel):
    name: FunctionName
    description: str | None = None
    parameters: dict | None = None  # a JSON schema; none: no arguments
    strict: bool | None = None


class Tool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(RequestModel):
    name: FunctionName


class NamedToolChoice(RequestModel):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(RequestModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    json_schema: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(RequestModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs the 'json_schema' object")
        return self


# Output lengths past the context are clamped to it (api.budget.output_budget);
# past a 32-bit integer they are nonsense, not a wish: a 400 naming the field.
OutputTokens = Annotated[int, Field(ge=1, le=2**31 - 1)]


class Prediction(RequestModel):
    """OpenAI's Predicted Outputs: text the answer is expected to repeat (the
    file being edited). Its tokens become one more source of speculative
    guesses (IMPETUS_SPECULATIVE); the answer itself is unchanged."""

    type: Literal["content"]
    content: Union[str, Annotated[list[TextPart], Field(min_length=1)]]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: OutputTokens | None = None
    max_completion_tokens: OutputTokens | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Output that must match a schema (enforced by constrained decoding).
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None
    # Passed to the chat template, e.g. {"enable_thinking": false} (vLLM's and SGLang's field).
    chat_template_kwargs: dict | None = None
    reasoning_effort: Effort | None = None
    prediction: Prediction | None = None

    def template_arguments(self) -> dict:
        """What the chat template is given beside the messages: the reasoning
        effort's arguments, then chat_template_kwargs (which win)."""
        return {**effort_arguments(self.reasoning_effort), **(self.chat_template_kwargs or {})}

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_needs_tools(cls, value, info: ValidationInfo):
        tools = info.data.get("tools")  # validated before tool_choice (field order)
        if value not in (None, "none", "auto") and not tools:
            raise ValueError("tool_choice requires tools")
        if isinstance(value, NamedToolChoice):
            names = [t.function.name for t in tools or []]
            if value.function.name not in names:
                raise ValueError(f"tool_choice names '{value.function.name}', which is not "
                                 f"among the tools ({', '.join(names)})")
        return value


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: OutputTokens | None = 16
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    # The text after the cursor: the prompt is what comes before it, and the answer what goes
    # between (fill-in-the-middle, with the model's FIM tokens: api.fim).
    suffix: str | None = Field(default=None, max_length=1_000_000)

    @model_validator(mode="after")
    def _suffix_takes_text(self):
        if self.suffix is not None and not (isinstance(self.prompt, str) or (
                isinstance(self.prompt, list) and all(isinstance(p, str) for p in self.prompt))):
            raise ValueError("suffix needs the prompt as text (the text before the cursor)")
        if self.suffix is not None and self.echo:
            raise ValueError("echo cannot be used with suffix")
        return self

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and isinstance(value[0], list) and any(not p for p in value):
            raise ValueError("token prompts must not be empty")
        return value


# -- answers ---------------------------------------------------------------


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict | None = None
    completion_tokens_details: dict | None = None


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(ResponseModel):
    content: list[TokenLogprob] | None = None


class ResponseToolCall(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: dict  # {"name": str, "arguments": JSON text}


class AssistantMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None  # what a reasoning model thought, apart from the answer
    tool_calls: list[ResponseToolCall] | None = None


class ChatChoice(ResponseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"] | None
    logprobs: ChoiceLogprobs | None = None


class _CompletionObject(ResponseModel):
    """What every completion, chunk and answer of chat and text completions carries."""

    id: str
    created: int
    model: str
    system_fingerprint: str | None = None


class ChatCompletion(_CompletionObject):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(ResponseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict] | None = None  # {"index", "id"?, "type"?, "function": {"name"?, "arguments"}}


class ChatChunkChoice(ResponseModel):
    index: int
    delta: ChatDelta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_CompletionObject):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(ResponseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int]


class CompletionChoice(ResponseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class Completion(_CompletionObject):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None
