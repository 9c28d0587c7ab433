"""POST /v1/audio/transcriptions: speech to text, as OpenAI's API takes it.

A multipart form (`file`, `model`, `language`, `prompt`, `response_format`
json/text/srt/vtt/verbose_json, `temperature`, `timestamp_granularities[]`),
what the openai SDK's `audio.transcriptions.create` and Open WebUI's
microphone send. The recording is decoded (speech.audio), waits its turn
among the keys (speech.host), and is transcribed by a Whisper model
(speech.whisper). Keys, their model lists, limits and budgets hold as on
every route; usage is the recording's seconds (OpenAI's
`{"type": "duration", "seconds"}`), charged to the key as prompt tokens at
Whisper's 50 encoder positions a second, and the text's tokens as output.
Errors are OpenAI's 400s naming the field.
"""

from __future__ import annotations

import math

from impetus.api.forms import one, read_form
from impetus.speech.audio import SAMPLE_RATE, decode
from impetus.speech.host import SpeechModelNotFound
from impetus.speech.whisper import Options, language_name
from impetus.web import APIError, bad_request

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]",
          "timestamp_granularities", "stream", "chunking_strategy", "include[]"}
TOKENS_PER_SECOND = 50  # Whisper's encoder: 1,500 positions per 30 s window


def options_of(fields: dict) -> tuple[Options, str]:
    response_format = one(fields, "response_format", "json")
    if response_format not in FORMATS:
        raise bad_request(f"response_format must be one of {', '.join(FORMATS)}.", param="response_format")
    try:
        temperature = float(one(fields, "temperature", "0"))
    except ValueError:
        raise bad_request("temperature must be a number.", param="temperature") from None
    if not 0 <= temperature <= 1:
        raise bad_request("temperature must be between 0 and 1.", param="temperature")
    granularities = set(fields.get("timestamp_granularities", ["segment"]))
    if not granularities <= {"segment", "word"}:
        raise bad_request("timestamp_granularities takes segment and word.", param="timestamp_granularities")
    if "word" in granularities and response_format != "verbose_json":
        raise bad_request("Word timestamps need response_format verbose_json.", param="timestamp_granularities")
    if one(fields, "stream", "false").lower() not in ("false", "0"):
        raise bad_request("Streamed transcription is not offered for Whisper models.", param="stream")
    language = one(fields, "language") or None
    if language is not None and language_name(language) is None:
        raise bad_request(f"Unknown language {language!r}: use an ISO-639-1 code such as en.", param="language")
    return Options(language, one(fields, "prompt"), temperature, "word" in granularities), response_format


def _clock(seconds: float, comma: bool) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{',' if comma else '.'}{ms:03d}"


def subtitles(segments: list[dict], srt: bool) -> str:
    cues = [(s["start"], s["end"], s["text"].strip()) for s in segments if s.get("text", "").strip()]
    if srt:
        return "".join(f"{i}\n{_clock(a, True)} --> {_clock(b, True)}\n{t}\n\n" for i, (a, b, t) in enumerate(cues, 1))
    return "WEBVTT\n\n" + "".join(f"{_clock(a, False)} --> {_clock(b, False)}\n{t}\n\n" for a, b, t in cues)


class TranscriptionsResource:
    multipart = True  # the body is a form (api.middleware.JSONBodyMiddleware leaves it raw)

    def __init__(self, speech, settings, metrics):
        self.speech = speech
        self.settings = settings
        self.metrics = metrics

    def on_post(self, req, resp):
        fields, upload = read_form(req, FIELDS, "audio")
        name = one(fields, "model")
        if not name:
            raise bad_request("Missing required parameter: 'model'.", param="model")
        if upload is None:
            raise bad_request("Missing required parameter: 'file'.", param="file")
        options, response_format = options_of(fields)
        account = req.context.account
        account.check_model(name)
        try:
            model = self.speech.get(name)
        except SpeechModelNotFound:
            raise APIError(404, f"The speech model '{name}' does not exist. GET /v1/models lists the models "
                                "(type 'transcription').", param="model", code="model_not_found") from None
        audio = decode(upload[1], self.settings)
        seconds = audio.size / SAMPLE_RATE
        account.admit(resp)
        req.context.model = name
        result = self.speech.transcribe(model, audio, seconds, options, account.tenant)
        prompt_tokens = math.ceil(seconds * TOKENS_PER_SECOND)
        account.charge(name, prompt_tokens, result.tokens)
        self.metrics.prompt_tokens.labels(name, account.name).inc(prompt_tokens)
        self.metrics.generation_tokens.labels(name, account.name).inc(result.tokens)
        usage = {"type": "duration", "seconds": math.ceil(seconds)}
        text = result.text.strip()
        if response_format == "json":
            resp.media = {"text": text, "usage": usage}
        elif response_format == "verbose_json":
            resp.media = {"task": "transcribe", "language": language_name(result.language) or result.language,
                          "duration": round(seconds, 3), "text": text, "usage": usage,
                          "segments": [{k: s.get(k) for k in ("id", "seek", "start", "end", "text", "tokens",
                                                              "temperature", "avg_logprob", "compression_ratio",
                                                              "no_speech_prob")} for s in result.segments],
                          **({"words": [{"word": w["word"], "start": w["start"], "end": w["end"]}
                                        for w in result.words]} if options.words else {})}
        else:
            resp.content_type = "text/plain; charset=utf-8"
            resp.text = text + "\n" if response_format == "text" else subtitles(result.segments,
                                                                               response_format == "srt")
