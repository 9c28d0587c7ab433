"""OpenAI's embeddings (POST /v1/embeddings): the request and its answer."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from impetus.api.schema_base import RequestModel, ResponseModel

NonEmptyText = Annotated[str, Field(min_length=1)]


TokenId = Annotated[int, Field(ge=0)]


TokenIds = Annotated[list[TokenId], Field(min_length=1)]


class EmbeddingRequest(RequestModel):
    model: str = Field(min_length=1)
    # A text, texts, one list of token ids or several (ids of the embedding
    # model's own tokenizer, without special tokens). At most 2048 inputs, as OpenAI.
    input: Union[NonEmptyText, Annotated[list[NonEmptyText], Field(min_length=1, max_length=2048)],
                 TokenIds, Annotated[list[TokenIds], Field(min_length=1, max_length=2048)]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class EmbeddingVector(ResponseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    # floats, or base64 of little-endian float32 bytes (encoding_format "base64")
    embedding: Union[list[float], str]


class EmbeddingUsage(ResponseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingVector]
    model: str
    usage: EmbeddingUsage
