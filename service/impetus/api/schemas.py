"""Pydantic v2 schemas for every request and response of the OpenAI surface.

Requests forbid unknown fields, so a typo or an unsupported feature is a 400
naming the field rather than being silently ignored. Fields that OpenAI itself
treats as optional hints (`user`, `metadata`, `store`, `service_tier`) are
accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from impetus.models.registry import NAME_PATTERN

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# A request's place in the queue, as vLLM's: lower first; never earlier than its key's priority.
Priority = Annotated[int | None, Field(ge=-100, le=100, description=(
    "Impetus extension (vLLM's): lower is served first; never earlier than the key's priority "
    "(0 interactive, 1 batch)"))]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Request):
    include_usage: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


FunctionName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionCall(_Request):
    name: FunctionName
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Request):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
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

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _SamplingFields(_Request):
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0,
                                      description="none: the server's IMPETUS_DEFAULT_TEMPERATURE (1.0, as OpenAI)")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
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
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None

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


class FunctionDefinition(_Request):
    name: FunctionName
    description: str | None = None
    parameters: dict | None = None  # a JSON schema; none: no arguments
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: FunctionName


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Request):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    json_schema: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs the 'json_schema' object")
        return self


# Output lengths past the context are clamped to it (api.generation.output_budget);
# past a 32-bit integer they are nonsense, not a wish: a 400 naming the field.
OutputTokens = Annotated[int, Field(ge=1, le=2**31 - 1)]


class Prediction(_Request):
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
    prediction: Prediction | None = None

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

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and isinstance(value[0], list) and any(not p for p in value):
            raise ValueError("token prompts must not be empty")
        return value


NonEmptyText = Annotated[str, Field(min_length=1)]
TokenId = Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    # A text, texts, one list of token ids or several (ids of the embedding
    # model's own tokenizer, without special tokens). At most 2048 inputs, as OpenAI.
    input: Union[NonEmptyText, Annotated[list[NonEmptyText], Field(min_length=1, max_length=2048)],
                 TokenIds, Annotated[list[TokenIds], Field(min_length=1, max_length=2048)]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


# -- responses ---------------------------------------------------------------


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict | None = None
    completion_tokens_details: dict | None = None


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(_Response):
    content: list[TokenLogprob] | None = None


class ResponseToolCall(_Response):
    id: str
    type: Literal["function"] = "function"
    function: dict  # {"name": str, "arguments": JSON text}


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None  # what a reasoning model thought, apart from the answer
    tool_calls: list[ResponseToolCall] | None = None


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"] | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict] | None = None  # {"index", "id"?, "type"?, "function": {"name"?, "arguments"}}


class ChatChunkChoice(_Response):
    index: int
    delta: ChatDelta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(_Response):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int]


class CompletionChoice(_Response):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class Completion(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Model(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "impetus"
    # Extensions: a request for a model that is not loaded loads it.
    loaded: bool = False
    pinned: bool = False
    alias_of: str | None = None
    parameters: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    size_bytes: int | None = None
    chat_template: bool | None = None
    source: str | None = None
    memory_bytes: int | None = None
    weights_dtype: str | None = None
    # "chat" (completions and responses) or "embedding" (/v1/embeddings)
    type: Literal["chat", "embedding"] = "chat"
    dimensions: int | None = None


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[Model]


class EmbeddingVector(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    # floats, or base64 of little-endian float32 bytes (encoding_format "base64")
    embedding: Union[list[float], str]


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Response):
    object: Literal["list"] = "list"
    data: list[EmbeddingVector]
    model: str
    usage: EmbeddingUsage


class ResponseObject(_Response):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    model: str
    output: list[dict]
    usage: dict | None = None


class ResponseDeleted(_Response):
    id: str
    object: Literal["response"] = "response"
    deleted: bool


class ResponseEvent(_Response):
    type: str
    sequence_number: int


class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorDetail


class Health(_Response):
    status: str
    engines: list[dict] | None = None


class AdminLoadRequest(_Request):
    """POST /v1/admin/models/{model_id}/load"""

    pin: bool | None = Field(None, description="Never unload it to make room or for idleness.")
    keep_alive: float | None = Field(
        None, ge=0, description="Seconds it may stay idle before it is unloaded; 0: until memory is needed.")


class AdminFaultRequest(_Request):
    """POST /v1/admin/debug/fault (IMPETUS_DEBUG_FAULTS only)"""

    model: str = Field(..., min_length=1, description="A loaded model whose engine thread should raise.")


class AdminImportRequest(_Request):
    """POST /v1/admin/models/import"""

    source: str = Field(..., min_length=1, max_length=1000, description=(
        "A GGUF path on the server, ollama:NAME[:TAG], lmstudio:PUBLISHER/REPO or hf:OWNER/NAME."))
    name: str | None = Field(None, pattern=NAME_PATTERN,
                             description="The model's name (default: from the source).")
    force: bool = Field(False, description="Replace a model of that name.")
    bits: Literal[2, 3, 4, 5, 6, 8] | None = Field(None, description="MLX affine bits (default: from the source).")
    group_size: Literal[32, 64, 128] = 32
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="Store unquantized weights of this type instead.")


class LoadedModelState(_Response):
    id: str
    other_workers_told: int | None = None  # in answers to load
    pinned: bool
    keep_alive_s: float | None = None
    idle_s: float
    memory_bytes: int
    weights_dtype: str
    load_seconds: float
    running: int
    waiting: int
    max_batch_size: int
    in_flight: int


class AdminModels(_Response):
    """GET /v1/admin/models: the answering worker's models."""

    worker_pid: int
    budget_bytes: int
    used_bytes: int
    loaded: list[LoadedModelState]
    available: list[str]
    imports: list[dict] = Field(default_factory=list, description="Imports of the last ten minutes, with progress.")


class AdminUnloaded(_Response):
    id: str
    unloaded: bool  # in the answering worker
    worker_pid: int
    other_workers_told: int | None = None  # None: no Redis, this worker only


ModelName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^,|\s]+$")]


class AdminKeyCreate(_Request):
    """POST /v1/admin/keys"""

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
    admin: bool = False
    rpm: int | None = Field(None, ge=1, description="Requests per minute; default: the server's.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute; default: the server's.")
    expires_days: float | None = Field(None, gt=0)
    share: float = Field(1.0, gt=0, le=1000, description="Its weight when keys share the batch.")
    priority: Literal["interactive", "batch"] = Field(
        "interactive", description="batch: uses idle capacity and yields to interactive work.")
    models: list[ModelName] = Field(default_factory=list, max_length=256,
                                    description="The models it may use (names or aliases); empty: all.")
    budget_tokens: int | None = Field(None, ge=1, description="Tokens per budget_period; none: no budget.")
    budget_period: Literal["day", "week", "month"] = "month"


class AdminKeyUpdate(_Request):
    """PATCH /v1/admin/keys/{name}: what is given changes; rpm/tpm/budget_tokens 0
    mean the server's default (no budget); models [] means all."""

    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    share: float | None = Field(None, gt=0, le=1000)
    priority: Literal["interactive", "batch"] | None = None
    models: list[ModelName] | None = Field(None, max_length=256)
    budget_tokens: int | None = Field(None, ge=0)
    budget_period: Literal["day", "week", "month"] | None = None


# -- admin and report answers (described in /openapi.json) -----------------------


class KeyUsageTotals(_Response):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    last_used: float | None = None


class KeyBudget(_Response):
    tokens: int
    period: Literal["day", "week", "month"]


class AdminKey(_Response):
    """A key as the admin API shows it: never the key itself (but at creation)."""

    name: str
    prefix: str
    scopes: list[str]
    rpm: int | None
    tpm: int | None
    share: float
    priority: Literal["interactive", "batch"]
    created: float
    expires: float | None
    models: list[str] | None = Field(None, description="The models it may use; null: all.")
    budget: KeyBudget | None = None
    usage: KeyUsageTotals


class AdminKeyCreated(AdminKey):
    key: str = Field(..., description="The key itself, in this answer only.")


class AdminKeyList(_Response):
    object: Literal["list"]
    default_rpm: int
    default_tpm: int
    data: list[AdminKey]


class AdminKeyRevoked(_Response):
    name: str
    revoked: bool


class ImportJobState(_Response):
    """A background import: its source, name, status and progress."""

    source: str
    name: str
    status: str


class ImportJobList(_Response):
    object: Literal["list"]
    data: list[ImportJobState]


class DiscoveredModels(_Response):
    object: Literal["list"]
    data: list[dict]


class UsageRow(_Response):
    date: str
    key: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class UsageTotals(_Response):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class BudgetState(_Response):
    tokens: int
    period: Literal["day", "week", "month"]
    used: int
    remaining: int
    resets_in_s: int


class UsageReport(_Response):
    """Per day, key and model (server dates); GET /v1/usage adds the key's budget."""

    object: Literal["list"]
    since: str
    until: str
    key: str | None
    totals: UsageTotals
    data: list[UsageRow]
    budget: BudgetState | None = None


class AuditEntry(_Response):
    id: str
    at: float
    who: str
    action: str
    target: str
    address: str
    detail: dict


class AuditList(_Response):
    object: Literal["list"]
    data: list[AuditEntry]


class ServerStatus(_Response):
    """GET /v1/status: the answering worker's components."""

    status: str
    uptime_s: float
    worker_pid: int
    versions: dict[str, str | None]
    hardware: dict
    redis: str
    engines: list[dict]


class AdminEvent(_Response):
    """One server-sent event of GET /v1/admin/events (`event: snapshot` each second, and model events)."""

    type: str | None = None


class ResponseInputItemList(_Response):
    """GET /v1/responses/{response_id}/input_items"""

    object: Literal["list"]
    data: list[dict]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
