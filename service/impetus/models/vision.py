"""A vision-language model: mlx-vlm's vision part beside mlx-lm's text model.

An MLX VLM folder (config.json with a `vision_config`, as mlx-community
converts them) is loaded by mlx-vlm, whose classes and processors define what
the model does with an image. The engine, though, batches mlx-lm models:
its `BatchGenerator`, caches, prefix cache, KV quantization and speculation
all work on an mlx-lm text model. So the folder gives two faces over one set
of weights: mlx-lm's text model for the family (`FAMILIES`; Gemma 3 is
mlx-lm's own `gemma3`, Idefics3 and SmolVLM are a Llama) takes the very
arrays of mlx-vlm's language model (shared, not copied: one copy of the
weights in memory), and `Vision` keeps mlx-vlm's model for what only it
does: the processor (an image into pixels and the prompt's image tokens) and
`get_input_embeddings` (the vision tower and projector, merged into the
prompt's embeddings), whose output the engine feeds to the text model's
prefill as `input_embeddings`. After the prompt, decoding is the text
model's alone, so an image request batches with text requests.

Only families whose text model positions tokens in one dimension are served
this way. Qwen2-VL's family (3D "mrope" positions, shifted after each image
by a per-request delta that mlx-lm's batch cannot carry) is refused by name;
its folder still loads as text where mlx-lm knows it. This module must not
know about requests or the engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

log = logging.getLogger("impetus.models")


def _gemma3(config: dict) -> tuple[dict, dict[str, str]]:
    # mlx-lm's `gemma3` is the text half of the same checkpoint, under the same names.
    return config, {"": "language_model."}


def _llama(config: dict) -> tuple[dict, dict[str, str]]:
    text = dict(config["text_config"])
    text.update(model_type="llama", tie_word_embeddings=bool(text.get("tie_word_embeddings", False)))
    text.setdefault("num_key_value_heads", text["num_attention_heads"])
    return text, {"embed_tokens.": "model.embed_tokens.", "layers.": "model.layers.", "norm.": "model.norm.",
                  "lm_head.": "lm_head."}


# model_type -> (the mlx-lm config of its text model, mlx-vlm language-model names -> mlx-lm names);
# models.metadata.VISION_FAMILIES names the same.
FAMILIES = {"gemma3": _gemma3, "idefics3": _llama, "smolvlm": _llama}
REFUSED = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "glm4v_moe"}


class VisionUnsupported(ValueError):
    """A VLM folder whose family cannot be served with images."""


def is_vision_folder(config: dict) -> bool:
    return bool(config.get("vision_config"))


def family_of(config: dict) -> str:
    model_type = config.get("model_type", "")
    if model_type in FAMILIES:
        return model_type
    why = ("its 3D positions (mrope) cannot ride in mlx-lm's batch" if model_type in REFUSED
           else "no mapping of its text model onto mlx-lm yet")
    raise VisionUnsupported(f"images are not served for model type {model_type!r}: {why}; "
                            f"served: {', '.join(sorted(FAMILIES))}")


@dataclass
class Prepared:
    """A prompt with its images, as the processor made it."""

    tokens: list[int]
    inputs: dict  # pixel_values and the family's other image arrays, for get_input_embeddings
    spans: list[tuple[int, int]]  # each image's run of image tokens: [start, end)


class Vision:
    """mlx-vlm's model (vision tower, projector, embedding merge) and processor."""

    def __init__(self, model: nn.Module, processor, model_type: str):
        from mlx_vlm.utils import should_add_special_tokens

        self.model = model
        self.processor = processor
        self.model_type = model_type
        self.image_token_id = int(model.config.image_token_index)
        # The text a prompt holds where an image goes; the processor expands it.
        self.marker = getattr(processor, "boi_token", None) or processor.image_token
        self._add_special = should_add_special_tokens(model_type, processor)

    def prepare(self, text: str, images: list) -> Prepared:
        """The prompt's tokens with each image's tokens, and its pixels (CPU
        work in NumPy and PIL: no MLX computation)."""
        from mlx_vlm.utils import prepare_inputs

        inputs = prepare_inputs(self.processor, images=images, prompts=[text],
                                image_token_index=self.image_token_id, add_special_tokens=self._add_special)
        tokens = [int(t) for t in inputs.pop("input_ids")[0].tolist()]
        inputs.pop("attention_mask", None)
        spans, start = [], None
        for i, token in enumerate(tokens + [-1]):
            if token == self.image_token_id and start is None:
                start = i
            elif token != self.image_token_id and start is not None:
                spans.append((start, i))
                start = None
        return Prepared(tokens, inputs, spans)

    def embed(self, tokens: list[int], inputs: dict) -> mx.array:
        """The prompt's input embeddings, image features in place ([1, L, D]);
        on the engine thread."""
        ids = mx.array([tokens])
        features = self.model.get_input_embeddings(ids, inputs.get("pixel_values"), mask=mx.ones_like(ids),
                                                   **{k: v for k, v in inputs.items() if k != "pixel_values"})
        return features.inputs_embeds


def load(path: Path, config: dict, cast) -> tuple[nn.Module, Vision]:
    """The text model (mlx-lm's, for the engine) and the vision part, over
    one set of weights; `cast(module)` brings weights to the served dtype."""
    from mlx_lm.utils import _get_classes
    from mlx_vlm.utils import load_image_processor, load_model, load_processor

    family = family_of(config)
    vlm = load_model(path, lazy=True)
    cast(vlm)
    text_config, renames = FAMILIES[family](config)
    model_class, args_class = _get_classes(text_config)
    text = model_class(args_class.from_dict(text_config))
    source = dict(tree_flatten(vlm.language_model.parameters()))
    wanted = dict(tree_flatten(text.parameters()))
    shared = {}
    for name, value in source.items():
        prefix = next((p for p in renames if name.startswith(p)), None)
        if prefix is not None:
            target = renames[prefix] + name[len(prefix):]
            if target in wanted or target.rsplit(".", 1)[0] + ".weight" in wanted:
                shared[target] = value
    quantized = {n.rsplit(".", 1)[0] for n in shared if n.endswith(".scales")}
    if quantized:  # weights kept quantized (a GPU): the text model's layers quantized alike
        q = config.get("quantization") or {}
        nn.quantize(text, group_size=q.get("group_size", 64), bits=q.get("bits", 4), mode=q.get("mode", "affine"),
                    class_predicate=lambda p, m: p in quantized)
        wanted = dict(tree_flatten(text.parameters()))
    missing = sorted(set(wanted) - set(shared))
    if missing:
        raise VisionUnsupported(f"{path.name}: the text model's weights {missing[:3]} are not in the checkpoint")
    text.update(tree_unflatten(list(shared.items())))
    mx.eval(vlm.parameters())
    processor = load_processor(path, True, eos_token_ids=getattr(vlm.config, "eos_token_id", None))
    image_processor = load_image_processor(path)
    if image_processor is not None:
        processor.image_processor = image_processor
    return text, Vision(vlm, processor, family)
