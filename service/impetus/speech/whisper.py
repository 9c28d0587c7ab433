"""A Whisper model from mlx-audio, and one recording transcribed with it.

The model is mlx-audio's own (`mlx_audio.stt.load`: its classes, its
weights' dtype, its tokenizer and decoding loop with temperature fallback,
timestamps and word alignment), so a transcription here is the library's,
token for token. Two choices are ours:
- OpenAI's `temperature` 0 (its default) means "greedy, then hotter where a
  window fails its checks" (the fallback 0, 0.2, ... 1.0 that Whisper's
  `transcribe` has); another value is used alone.
- The random draws of that fallback are seeded (0) for each recording, so
  the same recording gives the same text every time.
It must not know about requests, keys or HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

FALLBACK = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


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
    def load(cls, path: Path, name: str) -> "SpeechModel":
        from mlx_audio.stt import load

        started = time.perf_counter()
        model = load(str(path))
        if getattr(model, "_processor", None) is None:
            raise ValueError(f"{name}: no Whisper tokenizer and feature extractor in {path}")
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
            word_timestamps=options.words)
        segments = [s for s in (result.segments or [])]
        words = [w for s in segments for w in s.get("words") or []]
        return Transcript(result.text, result.language or options.language or "en", segments, words,
                          sum(len(s.get("tokens") or []) for s in segments))
