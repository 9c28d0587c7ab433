"""A Whisper model from mlx-audio, and one recording transcribed with it.

The model is mlx-audio's own (`mlx_audio.stt.load`: its classes, its
weights' dtype, its tokenizer and decoding loop with temperature fallback,
timestamps and word alignment), so a transcription here is the library's,
token for token, for the same weights. Three choices are ours:
- OpenAI's `temperature` 0 (its default) means "greedy, then hotter where a
  window fails its checks" (the fallback 0, 0.2, ... 1.0 that Whisper's
  `transcribe` has); another value is used alone.
- The random draws of that fallback are seeded (0) for each recording, so
  the same recording gives the same text every time.
- On a CPU the weights are served in float32 (`as_float32`), on a GPU as
  stored, as the chat models are.
It must not know about requests, keys or HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from impetus.models.loader import cast_model, choose_weights_dtype

FALLBACK = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def as_float32(model) -> None:
    """mlx-audio keeps Whisper in float16; on a CPU, MLX emulates float16 (Whisper base
    took 129 s for a 3 s clip there, float32 a few seconds), so it is served in float32,
    as the chat models are (models.loader.choose_weights_dtype)."""
    import mlx.core as mx

    cast_model(model, "float32")  # a quantized Whisper is dequantized too
    model.encoder._positional_embedding = model.encoder._positional_embedding.astype(mx.float32)
    model.dtype = mx.float32


def language_name(code: str) -> str | None:
    """Whisper's name of a language ("english"), from its code ("en") or name; None: not one it knows."""
    from mlx_audio.stt.models.whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    code = TO_LANGUAGE_CODE.get(code.lower(), code.lower())
    return LANGUAGES.get(code)


@dataclass
class Options:
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    words: bool = False  # word timestamps (timestamp_granularities ["word"])


@dataclass
class Transcript:
    text: str
    language: str
    segments: list[dict]
    words: list[dict]
    tokens: int  # text tokens decoded


class SpeechModel:
    def __init__(self, name: str, path: Path, model, load_seconds: float):
        self.name = name
        self.path = path
        self.model = model
        self.load_seconds = load_seconds

    @classmethod
    def load(cls, path: Path, name: str, weights_dtype: str = "auto") -> "SpeechModel":
        from mlx_audio.stt import load

        started = time.perf_counter()
        model = load(str(path))
        if getattr(model, "_processor", None) is None:
            raise ValueError(f"{name}: no Whisper tokenizer and feature extractor in {path}")
        if choose_weights_dtype(weights_dtype) == "float32":
            as_float32(model)
        return cls(name, path, model, time.perf_counter() - started)

    @property
    def nbytes(self) -> int:
        from mlx.utils import tree_flatten

        return sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))

    def transcribe(self, audio, options: Options) -> Transcript:
        """On a native thread: MLX computes here."""
        import mlx.core as mx

        mx.random.seed(0)
        result = self.model.generate(
            audio, verbose=None, language=options.language, initial_prompt=options.prompt or None,
            temperature=FALLBACK if options.temperature == 0 else options.temperature,
            word_timestamps=options.words, fp16=self.model.dtype == mx.float16)
        segments = list(result.segments or [])
        words = [w for s in segments for w in s.get("words") or []]
        return Transcript(result.text, result.language or options.language or "en", segments, words,
                          sum(len(s.get("tokens") or []) for s in segments))
