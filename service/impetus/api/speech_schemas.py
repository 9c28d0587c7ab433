"""POST /v1/audio/transcriptions, as OpenAI's API describes it: the form (for
the OpenAPI document; api.transcriptions reads and checks the form itself)
and the JSON answers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from impetus.api.schema_base import RequestModel, ResponseModel


class TranscriptionRequest(RequestModel):
    """multipart/form-data"""

    file: bytes = Field(description="the recording: wav, mp3, m4a, webm/opus, ogg, flac")
    model: str = Field(min_length=1, description="a speech-to-text model (GET /v1/models: type transcription)")
    language: str | None = Field(None, description="ISO-639-1 code; none: detected")
    prompt: str | None = None
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = "json"
    temperature: float = Field(0.0, ge=0, le=1, description="0: greedy, with Whisper's fallback")
    timestamp_granularities: list[Literal["segment", "word"]] | None = Field(
        None, description="sent as timestamp_granularities[]; word needs verbose_json")


class DurationUsage(ResponseModel):
    type: Literal["duration"] = "duration"
    seconds: int


class Transcription(ResponseModel):
    text: str
    usage: DurationUsage | None = None
    # verbose_json
    task: str | None = None
    language: str | None = None
    duration: float | None = None
    segments: list[dict] | None = None
    words: list[dict] | None = None
