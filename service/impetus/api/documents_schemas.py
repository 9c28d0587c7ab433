"""OpenAI's requests for vector stores, their files and batches, and their search.

Strict as every request here (an unknown field is a 400 naming it). Bounds are
OpenAI's: chunking 100 to 4,096 tokens with an overlap of at most half,
`expires_after` 1 to 365 days from `last_active_at`, 16 attributes a file,
filters as documents.filters evaluates them, 1 to 50 results a search.
`rewrite_query` is accepted and does nothing (no model rewrites the query
here): the response's `search_query` is the query as sent.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from impetus.api.schema_base import RequestModel, ResponseModel
from impetus.documents import chunking
from impetus.documents.filters import attributes_error

FileId = Annotated[str, Field(min_length=1, max_length=64)]
Scalar = Union[str, int, float, bool]
Attributes = dict[str, Scalar]


class StaticChunking(RequestModel):
    max_chunk_size_tokens: int = Field(chunking.DEFAULT_MAX_TOKENS, ge=chunking.MIN_MAX_TOKENS,
                                       le=chunking.MAX_MAX_TOKENS)
    chunk_overlap_tokens: int = Field(chunking.DEFAULT_OVERLAP, ge=0)

    @model_validator(mode="after")
    def _overlap(self):
        problem = chunking.check(self.max_chunk_size_tokens, self.chunk_overlap_tokens)
        if problem:
            raise ValueError(problem)
        return self


class ChunkingStrategy(RequestModel):
    type: Literal["auto", "static"]
    static: StaticChunking | None = None

    @model_validator(mode="after")
    def _static(self):
        if (self.type == "static") != (self.static is not None):
            raise ValueError("static chunking takes a `static` object, and auto takes none")
        return self

    def sizes(self) -> tuple[int, int]:
        static = self.static or StaticChunking()
        return static.max_chunk_size_tokens, static.chunk_overlap_tokens


def sizes(strategy: ChunkingStrategy | None) -> tuple[int, int]:
    return strategy.sizes() if strategy else (chunking.DEFAULT_MAX_TOKENS, chunking.DEFAULT_OVERLAP)


class _WithAttributes(RequestModel):
    @field_validator("attributes", check_fields=False)
    @classmethod
    def _attributes(cls, value):
        problem = attributes_error(value)
        if problem:
            raise ValueError(problem)
        return value


class ExpiresAfter(RequestModel):
    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365)


Metadata = Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)]


class VectorStoreCreate(RequestModel):
    name: str | None = Field(None, max_length=256)
    description: str | None = Field(None, max_length=512)
    file_ids: list[FileId] = Field(default_factory=list, max_length=500)
    expires_after: ExpiresAfter | None = None
    chunking_strategy: ChunkingStrategy | None = None
    metadata: Metadata | None = None


class VectorStoreUpdate(RequestModel):
    name: str | None = Field(None, max_length=256)
    expires_after: ExpiresAfter | None = None
    metadata: Metadata | None = None


class VectorStoreFileCreate(_WithAttributes):
    file_id: FileId
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None


class VectorStoreFileUpdate(_WithAttributes):
    attributes: Attributes | None


class FileBatchCreate(_WithAttributes):
    file_ids: list[FileId] | None = Field(None, min_length=1, max_length=500)
    files: list[VectorStoreFileCreate] | None = Field(None, min_length=1, max_length=500)
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None

    @model_validator(mode="after")
    def _one_list(self):
        if (self.file_ids is None) == (self.files is None):
            raise ValueError("give file_ids or files, not both")
        return self

    def entries(self) -> list[VectorStoreFileCreate]:
        if self.files is not None:
            return [f.model_copy(update={"attributes": f.attributes if f.attributes is not None else self.attributes,
                                         "chunking_strategy": f.chunking_strategy or self.chunking_strategy})
                    for f in self.files]
        return [VectorStoreFileCreate(file_id=f, attributes=self.attributes, chunking_strategy=self.chunking_strategy)
                for f in self.file_ids]


class ComparisonFilter(RequestModel):
    type: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]
    key: str = Field(min_length=1, max_length=64)
    value: Union[Scalar, Annotated[list[Scalar], Field(max_length=100)]]

    @model_validator(mode="after")
    def _value(self):
        if (self.type in ("in", "nin")) != isinstance(self.value, list):
            raise ValueError(f"'{self.type}' compares with {'a list' if self.type in ('in', 'nin') else 'one value'}")
        return self


class CompoundFilter(RequestModel):
    type: Literal["and", "or"]
    filters: list[Union[ComparisonFilter, "CompoundFilter"]] = Field(min_length=1, max_length=16)


Filter = Union[ComparisonFilter, CompoundFilter]


class RankingOptions(RequestModel):
    ranker: Literal["none", "auto", "default-2024-11-15"] = "auto"
    score_threshold: float = Field(0.0, ge=0.0, le=1.0)


class VectorStoreSearch(RequestModel):
    query: Union[Annotated[str, Field(min_length=1, max_length=4096)],
                 Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]], Field(min_length=1,
                                                                                              max_length=8)]]
    filters: Filter | None = None
    max_num_results: int = Field(10, ge=1, le=50)
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = False

    def queries(self) -> list[str]:
        return [self.query] if isinstance(self.query, str) else list(self.query)


class FileSearchTool(RequestModel):
    """The Responses API's hosted `file_search` tool (api.file_search runs it)."""

    type: Literal["file_search"]
    vector_store_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=16)
    max_num_results: int = Field(5, ge=1, le=50)
    filters: Filter | None = None
    ranking_options: RankingOptions | None = None


class HostedToolChoice(RequestModel):
    """tool_choice {"type": "file_search"}: the model searches first."""

    type: Literal["file_search"]


# -- answers (described in /openapi.json) ---------------------------------------


class FileUploadRequest(RequestModel):
    """multipart/form-data (expires_after[anchor] created_at and expires_after[seconds] may come too)"""

    file: bytes = Field(description="text, Markdown, HTML, PDF, DOCX or source code (for assistants, user_data)")
    purpose: Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]


class FileObject(ResponseModel):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: str | None = None


class FileList(ResponseModel):
    object: Literal["list"]
    data: list[FileObject]
    has_more: bool


class Deleted(ResponseModel):
    id: str
    object: str
    deleted: bool


class FileCounts(ResponseModel):
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    total: int


class VectorStoreObject(ResponseModel):
    id: str
    object: Literal["vector_store"]
    created_at: int
    name: str | None = None
    usage_bytes: int
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"]
    expires_after: dict | None = None
    expires_at: int | None = None
    last_active_at: int | None = None
    metadata: dict | None = None


class VectorStoreList(ResponseModel):
    object: Literal["list"]
    data: list[VectorStoreObject]
    has_more: bool


class VectorStoreFileObject(ResponseModel):
    id: str
    object: Literal["vector_store.file"]
    usage_bytes: int
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    last_error: dict | None = None
    chunking_strategy: dict | None = None
    attributes: dict | None = None


class VectorStoreFileList(ResponseModel):
    object: Literal["list"]
    data: list[VectorStoreFileObject]
    has_more: bool


class FileContentPage(ResponseModel):
    object: Literal["vector_store.file_content.page"]
    data: list[dict]
    has_more: bool


class FileBatchObject(ResponseModel):
    id: str
    object: Literal["vector_store.files_batch"]
    created_at: int
    vector_store_id: str
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    file_counts: FileCounts


class SearchResult(ResponseModel):
    file_id: str
    filename: str
    score: float
    attributes: dict | None = None
    content: list[dict]


class SearchResultsPage(ResponseModel):
    object: Literal["vector_store.search_results.page"]
    search_query: str | list[str]
    data: list[SearchResult]
    has_more: bool
