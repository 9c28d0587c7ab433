"""llama.cpp's `/infill` (llama.vim, llama.vscode), as its server documents it.

The request names the text before the cursor (`input_prefix`, then `prompt`,
the current line's start), after it (`input_suffix`) and other files'
chunks (`input_extra`); sampling as llama.cpp names it (`n_predict`,
`repeat_penalty`). Options that decide nothing here are accepted and ignored
(`cache_prompt`: the prefix cache always works; `id_slot`, `samplers`,
`t_max_prompt_ms`, `n_indent`...), any other field is a 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from impetus.api.schema_base import Penalty, Priority, RequestModel, ResponseModel

_TEXT = 1_000_000  # characters of one text field


class ExtraChunk(RequestModel):
    filename: str | None = Field(default=None, max_length=4096)
    text: str = Field(default="", max_length=_TEXT)


class InfillRequest(RequestModel):
    """POST /infill."""

    sampling_names: ClassVar[dict] = {"repetition_penalty": "repeat_penalty"}  # api.budget.with_defaults

    model: str | None = Field(default=None, min_length=1, description="none: the server's default model")
    input_prefix: str = Field(default="", max_length=_TEXT)
    input_suffix: str = Field(default="", max_length=_TEXT)
    input_extra: Annotated[list[ExtraChunk], Field(max_length=256)] = []
    prompt: str = Field(default="", max_length=_TEXT)
    n_predict: int = Field(default=-1, ge=-1, le=1_000_000, description="-1: the server's default; 0: prefill only")
    t_max_predict_ms: int = Field(default=0, ge=0, description="stop after this long once a line is written")
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = None
    stop: Annotated[list[str], Field(max_length=16)] = []
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    response_fields: Annotated[list[str], Field(max_length=64)] | None = None
    priority: Priority = None
    # llama.cpp's options that decide nothing here: accepted and ignored.
    id_slot: int | None = None
    cache_prompt: bool | None = None
    t_max_prompt_ms: int | None = None
    samplers: list[str] | None = None
    n_indent: int | None = None
    n_probs: int | None = None
    n_keep: int | None = None
    repeat_last_n: int | None = None
    typical_p: float | None = None
    timings_per_token: bool | None = None
    return_tokens: bool | None = None

    @property
    def repetition_penalty(self) -> float | None:
        return self.repeat_penalty

    logit_bias: ClassVar[None] = None  # llama.cpp's shape differs; not taken here


class InfillTimings(ResponseModel):
    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    cache_n: int


class InfillResponse(ResponseModel):
    content: str
    stop: bool
    model: str
    tokens_predicted: int | None = None
    tokens_evaluated: int | None = None
    tokens_cached: int | None = None
    stop_type: str | None = None  # "eos", "word", "limit"
    stopping_word: str | None = None
    truncated: bool | None = None
    timings: InfillTimings | None = None
