"""A prompt with images: its key in the prefix cache, and its prefill through its last image.

An image enters the prompt as a run of identical placeholder tokens (Gemma 3:
256 `<image_soft_token>`s, SmolVLM: 64 `<image>`s per tile), so two prompts
with different screenshots have the same tokens. The prefix cache must tell
them apart: `cache_key` gives each image's positions ids drawn from a digest
of the image's bytes (negative: never a real token; 31 bits: the disk tier
stores them as int32), and every lookup and store of the prefix cache, RAM,
disk and the shared prefix in flight, uses that key instead of the tokens.
The same screenshot sent again, or the next turn of a conversation about
it, finds its KV cache and encodes nothing.

`prefill` computes the part of a prompt that the cache did not hold, up to
the end of its last image, from input embeddings: mlx-vlm's
`get_input_embeddings` (vision tower, projector, image features put in
place of the placeholders) into the text model's `input_embeddings`, in the
batch's prefill chunks, keeping the request's points on the way. The rest of
the prompt is text, and joins mlx-lm's batch like any other prompt; so do its
decode steps. All images of a prompt are encoded when any one must be (the
embedding merge fills the placeholders in order); an image wholly inside the
cached prefix costs its encoding then, not its prefill. This room must not
decide who runs, nor touch the batch.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import mlx.core as mx


@dataclass
class Media:
    """The images of one prompt, as the model's processor made them."""

    inputs: dict  # pixel_values and the family's other arrays (models.vision.Vision.embed)
    spans: list[tuple[int, int]]  # each image's placeholder run: [start, end)
    digests: list[bytes]  # each image's content digest, in prompt order

    @property
    def end(self) -> int:
        """Where the last image's placeholders end."""
        return self.spans[-1][1]


def cache_key(tokens: list[int], media: Media | None) -> list[int]:
    """The prompt as the prefix cache knows it: each image's placeholders
    replaced by ids drawn from its digest (the same image, the same ids)."""
    if media is None:
        return tokens
    key = list(tokens)
    for (start, end), digest in zip(media.spans, media.digests):
        stream = hashlib.shake_256(digest).digest(4 * (end - start))
        for i in range(end - start):
            key[start + i] = -1 - (int.from_bytes(stream[4 * i:4 * i + 4], "little") & 0x7FFFFFFE)
    return key


def prefill(model, vision, tokens: list[int], media: Media, cache: list, start: int, step: int,
            points: set[int], keep) -> None:
    """Compute `tokens[start:media.end]` into `cache` from the prompt's input
    embeddings, in chunks of `step` that end at each of `points` in that
    range, where `keep(length, copy_of_cache)` is called."""
    embeddings = vision.embed(tokens, media.inputs)
    end = media.end
    stops = sorted(p for p in points if start < p < end) + [end]
    position = start
    for stop in stops:
        while position < stop:
            upto = min(position + step, stop)
            # A slice of its own each call: the model scales its input embeddings in place.
            model(mx.array([tokens[position:upto]]), cache=cache, input_embeddings=embeddings[:, position:upto])
            mx.eval([c.state for c in cache])
            position = upto
        if stop < end:
            keep(stop, copy.deepcopy(cache))
