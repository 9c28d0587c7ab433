"""An uploaded recording as Whisper hears it: 16 kHz mono float32, within limits.

Clients send what they record: wav from the openai SDK's examples, mp3, m4a
(AAC) from a phone or a Mac's Voice Memos, webm/opus from a browser's
MediaRecorder (Open WebUI's microphone). mlx-audio reads wav, mp3 and flac
itself but needs an `ffmpeg` program for the rest; PyAV brings FFmpeg's
libraries in its wheel (on a Mac and on Linux alike), so every format is
decoded in-process, by one path, with no program to install.

It decides the limits: the upload's bytes (`audio_max_bytes`, OpenAI's 25 MB)
and its length (`audio_max_seconds`), counted while decoding, so a small
file that claims hours (opus compresses silence to almost nothing) is
refused after that many seconds' work, not after decoding them all. Bad input
is a 400 naming `file`. It must not know about models.
"""

from __future__ import annotations

import io

import numpy as np

from impetus.web import bad_request

SAMPLE_RATE = 16_000


def decode(data: bytes, settings) -> np.ndarray:
    """The recording, resampled to 16 kHz mono float32 in [-1, 1]."""
    import av

    if len(data) > settings.audio_max_bytes:
        raise bad_request(f"The file is larger than {settings.audio_max_bytes} bytes (IMPETUS_AUDIO_MAX_BYTES).",
                          param="file", code="audio_too_large")
    if not data:
        raise bad_request("The file is empty.", param="file", code="invalid_audio")
    limit = int(settings.audio_max_seconds * SAMPLE_RATE)
    pieces, count = [], 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise bad_request("The file holds no audio.", param="file", code="invalid_audio")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    pieces.append(samples)
                    count += samples.size
                if count > limit:
                    raise bad_request(f"The recording is longer than {settings.audio_max_seconds:g} s "
                                      "(IMPETUS_AUDIO_MAX_SECONDS).", param="file", code="audio_too_long")
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
    except (av.FFmpegError, ValueError, EOFError, OSError):  # whatever FFmpeg makes of a stranger's bytes
        raise bad_request("The file is not audio this server can read (wav, mp3, m4a, webm, ogg, flac, ...).",
                          param="file", code="invalid_audio") from None
    audio = np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)
    if audio.size == 0:
        raise bad_request("The file holds no audio samples.", param="file", code="invalid_audio")
    return audio
