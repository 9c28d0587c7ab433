"""Images in the engine: token for token what mlx-vlm's own `generate` gives.

Two tiny random VLM families made with mlx-vlm's classes
(impetus.bench.random_vlm): Gemma 3 and Idefics3 (SmolVLM). The reference is
mlx-vlm itself, loaded from the same folder, greedy; Impetus must give the
same tokens alone, beside text requests in the batch, after a pause, and
from the prefix cache (which must tell two images apart and never encode or
prefill a repeated one again).
"""

from __future__ import annotations

import hashlib
import io
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from impetus.engine.engine import Engine
from impetus.engine.media import Media
from impetus.engine.request import ANONYMOUS, SamplingParams, Tenant
from impetus.engine.waiters import ThreadWaiter

sys.path.insert(0, str(Path(__file__).parent.parent))
from impetus.bench import random_vlm as vision_models  # noqa: E402

from engine_events import tokens_of  # noqa: E402

QUESTION = "What is in this image? Describe it."
MAX_TOKENS = 16


picture = vision_models.picture


@pytest.fixture(scope="module", params=["gemma3", "idefics3"])
def family(request, tmp_path_factory, settings):
    from impetus.models.loader import load

    folder = getattr(vision_models, request.param)(tmp_path_factory.mktemp("vlm") / request.param)
    loaded = load(folder, name=request.param, weights_dtype="float32")
    engine = Engine(loaded, settings.model_copy(update={"speculative": "off", "prefix_checkpoint_min_tokens": 8}))
    engine.start()
    engine.small = None
    # A batch of four (and one spare slot), so that a second key's requests pause one of the first's.
    small = Engine(loaded, settings.model_copy(update={"speculative": "off", "max_batch_size": 4}))
    small.start()
    engine.small = small
    yield folder, loaded, engine
    engine.stop()
    small.stop()


def reference(folder: Path, prompt: str, images: list[bytes], max_tokens: int = MAX_TOKENS) -> list[int]:
    """mlx-vlm's own greedy answer (its model and processor, loaded anew)."""
    from mlx_vlm import generate

    model, processor = _reference_model(folder)
    out = generate(model, processor, prompt, image=[Image.open(io.BytesIO(b)) for b in images],
                   max_tokens=max_tokens, temperature=0.0, verbose=False)
    return list(out.token_ids)


_loaded: dict = {}


def _reference_model(folder: Path):
    from mlx_vlm import load

    if folder not in _loaded:
        _loaded[folder] = load(str(folder))
    return _loaded[folder]


def prompt_text(loaded, marker_count: int = 1, question: str = QUESTION) -> str:
    vision = loaded.vision
    content = vision.marker * marker_count + question
    return loaded.tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": content}]}],
                                                add_generation_prompt=True, tokenize=False)


def submit(engine, loaded, text: str, images: list[bytes], tenant=ANONYMOUS, **params):
    prepared = loaded.vision.prepare(text, [Image.open(io.BytesIO(b)) for b in images])
    media = Media(prepared.inputs, prepared.spans, [hashlib.sha256(b).digest() for b in images])
    params = {"temperature": 0.0, "max_tokens": MAX_TOKENS, **params}
    return engine.submit(prepared.tokens, SamplingParams(**params), ThreadWaiter(), media=media, tenant=tenant)


def test_alone_and_again_from_the_prefix_cache(family):
    folder, loaded, engine = family
    text = prompt_text(loaded)
    image = picture(1)
    expected = reference(folder, text, [image])
    before = engine.snapshot()
    first, end = tokens_of(submit(engine, loaded, text, [image]))
    assert first == expected[:len(first)] and end.reason in ("stop", "length")
    assert len(first) == len(expected) or end.reason == "stop"
    again, end = tokens_of(submit(engine, loaded, text, [image]))
    assert again == first
    after = engine.snapshot()
    assert after["image_prefills"] - before["image_prefills"] == 1  # the second one read the cache
    assert end.cached_tokens >= loaded.vision.prepare(text, [Image.open(io.BytesIO(image))]).spans[-1][1]


def test_another_image_is_not_taken_from_the_cache(family):
    folder, loaded, engine = family
    text = prompt_text(loaded)
    one, two = picture(2), picture(3)
    tokens_of(submit(engine, loaded, text, [one]))
    before = engine.snapshot()
    got, _ = tokens_of(submit(engine, loaded, text, [two]))
    assert engine.snapshot()["image_prefills"] - before["image_prefills"] == 1
    assert got == reference(folder, text, [two])[:len(got)]
    assert reference(folder, text, [one]) != reference(folder, text, [two])  # the images matter


def test_in_a_batch_with_text_requests_and_two_images(family):
    folder, loaded, engine = family
    text = prompt_text(loaded, 2, "Compare the two pictures.")
    images = [picture(4), picture(5, size=(40, 90))]
    expected = reference(folder, text, images)
    words = loaded.tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "The fox"}]}],
                                                 add_generation_prompt=True)
    others = [engine.submit(words, SamplingParams(max_tokens=24, temperature=0.0), ThreadWaiter()) for _ in range(3)]
    handle = submit(engine, loaded, text, images)
    got, _ = tokens_of(handle)
    assert got == expected[:len(got)] and len(got) >= min(len(expected), 2)
    assert all(tokens_of(o)[1].reason in ("stop", "length") for o in others)


def test_paused_and_resumed_it_answers_the_same(family):
    folder, loaded, engine = family
    small = engine.small
    text = prompt_text(loaded, 1, "Tell a long story about it.")
    images = [picture(6 + i) for i in range(4)]
    expected = [reference(folder, text, [image], max_tokens=400) for image in images]
    first = Tenant("a", "key-a")
    handles = [submit(small, loaded, text, [image], tenant=first, max_tokens=400) for image in images]
    deadline = time.monotonic() + 60
    while not all(h.outbox for h in handles):  # both decoding: one can be paused
        assert time.monotonic() < deadline
        time.sleep(0.005)
    preempted = small.stats.preempted
    words = loaded.tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                                                 add_generation_prompt=True)
    others = [small.submit(words, SamplingParams(max_tokens=100, temperature=0.0), ThreadWaiter(),
                           tenant=Tenant("b", "key-b")) for _ in range(3)]
    got = [tokens_of(h)[0] for h in handles]
    for handle in others:
        tokens_of(handle)
    assert small.stats.preempted > preempted
    assert got == expected
