"""The operator's API (/v1/admin/...: models, imports, keys, usage, audit,
events): its requests and the answers /openapi.json describes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from impetus.api.schema_base import RequestModel, ResponseModel
from impetus.models.registry import NAME_PATTERN


class AdminLoadRequest(RequestModel):
    """POST /v1/admin/models/{model_id}/load"""

    pin: bool | None = Field(None, description="Never unload it to make room or for idleness.")
    keep_alive: float | None = Field(
        None, ge=0, description="Seconds it may stay idle before it is unloaded; 0: until memory is needed.")


class AdminFaultRequest(RequestModel):
    """POST /v1/admin/debug/fault (IMPETUS_DEBUG_FAULTS only)"""

    model: str = Field(..., min_length=1, description="A loaded model whose engine thread should raise.")


class AdminImportRequest(RequestModel):
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


class LoadedModelState(ResponseModel):
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


class AdminModels(ResponseModel):
    """GET /v1/admin/models: the answering worker's models."""

    worker_pid: int
    budget_bytes: int
    used_bytes: int
    loaded: list[LoadedModelState]
    available: list[str]
    imports: list[dict] = Field(default_factory=list, description="Imports of the last ten minutes, with progress.")


class AdminUnloaded(ResponseModel):
    id: str
    unloaded: bool  # in the answering worker
    worker_pid: int
    other_workers_told: int | None = None  # None: no Redis, this worker only


ModelName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^,|\s]+$")]


class AdminKeyCreate(RequestModel):
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
    autocomplete_priority: Literal["interactive", "batch"] | None = Field(
        None, description="Its fill-in-the-middle requests' priority (/infill, suffix); none: as the key's.")


class AdminKeyUpdate(RequestModel):
    """PATCH /v1/admin/keys/{name}: what is given changes; rpm/tpm/budget_tokens 0
    mean the server's default (no budget); models [] means all."""

    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    share: float | None = Field(None, gt=0, le=1000)
    priority: Literal["interactive", "batch"] | None = None
    models: list[ModelName] | None = Field(None, max_length=256)
    budget_tokens: int | None = Field(None, ge=0)
    budget_period: Literal["day", "week", "month"] | None = None
    autocomplete_priority: Literal["interactive", "batch", ""] | None = Field(None, description='"": as the key\'s')


class KeyUsageTotals(ResponseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    last_used: float | None = None


class KeyBudget(ResponseModel):
    tokens: int
    period: Literal["day", "week", "month"]


class AdminKey(ResponseModel):
    """A key as the admin API shows it: never the key itself (but at creation)."""

    name: str
    prefix: str
    scopes: list[str]
    rpm: int | None
    tpm: int | None
    share: float
    priority: Literal["interactive", "batch"]
    autocomplete_priority: Literal["interactive", "batch"] | None = None
    created: float
    expires: float | None
    models: list[str] | None = Field(None, description="The models it may use; null: all.")
    budget: KeyBudget | None = None
    usage: KeyUsageTotals


class AdminKeyCreated(AdminKey):
    key: str = Field(..., description="The key itself, in this answer only.")


class AdminKeyList(ResponseModel):
    object: Literal["list"]
    default_rpm: int
    default_tpm: int
    data: list[AdminKey]


class AdminKeyRevoked(ResponseModel):
    name: str
    revoked: bool


class ImportJobState(ResponseModel):
    """A background import: its source, name, status and progress."""

    source: str
    name: str
    status: str


class ImportJobList(ResponseModel):
    object: Literal["list"]
    data: list[ImportJobState]


class DiscoveredModels(ResponseModel):
    object: Literal["list"]
    data: list[dict]


class UsageRow(ResponseModel):
    date: str
    key: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class UsageTotals(ResponseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class BudgetState(ResponseModel):
    tokens: int
    period: Literal["day", "week", "month"]
    used: int
    remaining: int
    resets_in_s: int


class UsageReport(ResponseModel):
    """Per day, key and model (server dates); GET /v1/usage adds the key's budget."""

    object: Literal["list"]
    since: str
    until: str
    key: str | None
    totals: UsageTotals
    data: list[UsageRow]
    budget: BudgetState | None = None


class AuditEntry(ResponseModel):
    id: str
    at: float
    who: str
    action: str
    target: str
    address: str
    detail: dict


class AuditList(ResponseModel):
    object: Literal["list"]
    data: list[AuditEntry]


class AdminEvent(ResponseModel):
    """One server-sent event of GET /v1/admin/events (`event: snapshot` each second, and model events)."""

    type: str | None = None
