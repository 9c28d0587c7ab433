"""Random vision-language models, made with mlx-vlm's own classes.

No trained VLM ships in a package here, so the tests (tiny ones) and
`impetus bench --scenario vision` (small ones: SmolLM2-135M's or Gemma 3
270M's text width, a SigLIP tower at 224 pixels, 64 tokens an image) build MLX folders as
mlx-community's converted models look (config.json with text and vision
configs, safetensors, a tokenizer with the family's image tokens, the
processor's configs and chat template) and check Impetus against mlx-vlm's
own `generate` on them, token for token. Two families: Gemma 3 (SigLIP tower,
pooled to a fixed number of tokens per image, sliding-window text layers)
and Idefics3 / SmolVLM (pixel shuffle connector, a Llama text model).
Random weights answer with noise, but deterministic noise: greedy decoding
of the same embeddings must give the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog. A picture shows a red square on a white field.",
    "What is in this image? Describe the screenshot. The capital of France is Paris.",
    "user assistant system model turn image picture photo colour colors blue green red",
] * 20


def _tokenizer(folder: Path, specials: list[str], bos: str, eos: str, vocab: int = 400) -> dict[str, int]:
    """A byte-level BPE tokenizer trained on a few sentences, with the
    family's special tokens; returns their ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(folder / "tokenizer.json"))
    return {s: tok.token_to_id(s) for s in specials}


def _save(model, config: dict, folder: Path) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=1))


GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


# Gemma 3's sizes: "tiny" for the tests (64-pixel images in 16-pixel patches,
# pooled to 4 tokens), "small" for the benchmark (224 pixels, 256 patches, 64 tokens).
GEMMA3_SIZES = {
    "tiny": {"hidden": 64, "layers": 3, "ffn": 128, "heads": 2, "head_dim": 32, "tokens": 4,
             "vision": 32, "vision_layers": 2, "vision_ffn": 64, "vision_heads": 2, "patch": 16, "image": 64},
    "small": {"hidden": 640, "layers": 6, "ffn": 2048, "heads": 4, "head_dim": 256, "tokens": 64,
              "vision": 384, "vision_layers": 4, "vision_ffn": 1536, "vision_heads": 6, "patch": 14, "image": 224},
}


def gemma3(folder: Path, seed: int = 7, size: str = "tiny") -> Path:
    """Gemma 3 (SigLIP tower, average-pooled to a fixed number of tokens per image)."""
    z = GEMMA3_SIZES[size]
    from mlx_vlm.models import gemma3 as family

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    ids = _tokenizer(folder, specials, "<bos>", "<eos>")
    vocab = 400
    config = {
        "model_type": "gemma3",
        "architectures": ["Gemma3ForConditionalGeneration"],
        "image_token_index": ids["<image_soft_token>"],
        "boi_token_index": ids["<start_of_image>"],
        "eoi_token_index": ids["<end_of_image>"],
        "mm_tokens_per_image": z["tokens"],
        "pad_token_id": ids["<pad>"],
        "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
        "bos_token_id": ids["<bos>"],
        "vocab_size": vocab,
        "hidden_size": z["hidden"],
        "text_config": {
            "model_type": "gemma3_text", "hidden_size": z["hidden"], "num_hidden_layers": z["layers"],
            "intermediate_size": z["ffn"], "num_attention_heads": z["heads"], "num_key_value_heads": 1,
            "head_dim": z["head_dim"], "query_pre_attn_scalar": z["head_dim"], "vocab_size": vocab,
            "sliding_window": 512, "sliding_window_pattern": 3, "mm_tokens_per_image": z["tokens"],
            "max_position_embeddings": 4096, "rope_scaling": None,
        },
        "vision_config": {
            "model_type": "siglip_vision_model", "hidden_size": z["vision"], "num_hidden_layers": z["vision_layers"],
            "intermediate_size": z["vision_ffn"], "num_attention_heads": z["vision_heads"], "patch_size": z["patch"],
            "image_size": z["image"],
        },
    }
    _build(family, config, folder, seed)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": False, "add_eos_token": False,
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>",
        "extra_special_tokens": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                 "image_token": "<image_soft_token>"},
        "model_max_length": 4096, "chat_template": GEMMA3_TEMPLATE,
    }))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": GEMMA3_TEMPLATE}))
    (folder / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Gemma3Processor", "image_seq_length": z["tokens"]}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Gemma3ImageProcessor", "processor_class": "Gemma3Processor",
        "do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "do_pan_and_scan": None, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_seq_length": z["tokens"], "resample": 2, "rescale_factor": 1 / 255,
        "size": {"height": z["image"], "width": z["image"]},
    }))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["<bos>"], "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]]}))
    return folder


def _build(family, config: dict, folder: Path, seed: int) -> None:
    import mlx.core as mx

    mx.random.seed(seed)
    model = _model(family, config)
    _normal(model, seed)
    _save(model, config, folder)


def picture(seed: int, size: tuple[int, int] = (80, 50)) -> bytes:
    """A PNG of random pixels (the same for the same seed)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _model(family, config: dict):
    """The family's `Model`, its text and vision configs made as mlx-vlm's loader makes them."""
    args = family.ModelConfig.from_dict(config)
    args.text_config = family.TextConfig.from_dict(config["text_config"])
    args.vision_config = family.VisionConfig.from_dict(config["vision_config"])
    return family.Model(args)


SCALE = 0.05


def _normal(model, seed: int) -> None:
    scale = SCALE
    """Weights drawn with a scale that keeps activations in range (the
    classes' own init leaves some at ones, which makes every logit tie)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    keys = mx.random.split(mx.random.key(seed), len(tree_flatten(model.parameters())))
    new = []
    for i, (name, value) in enumerate(tree_flatten(model.parameters())):
        if "norm" in name:
            new.append((name, value))
            continue
        new.append((name, scale * mx.random.normal(value.shape, key=keys[i]).astype(value.dtype)))
    model.update(tree_unflatten(new))
    mx.eval(model.parameters())


SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


# Idefics3's sizes: "tiny" for the tests (32-pixel images in 8-pixel patches, 4 tokens),
# "small" for the benchmark (SmolLM2-135M's text width, 224 pixels, 256 patches, 64 tokens).
IDEFICS3_SIZES = {
    "tiny": {"hidden": 64, "layers": 2, "ffn": 128, "heads": 4, "kv": 2, "vision": 32, "vision_layers": 2,
             "vision_ffn": 64, "vision_heads": 2, "patch": 8, "image": 32},
    "small": {"hidden": 576, "layers": 8, "ffn": 1536, "heads": 9, "kv": 3, "vision": 384, "vision_layers": 4,
              "vision_ffn": 1536, "vision_heads": 6, "patch": 14, "image": 224},
}


def idefics3(folder: Path, seed: int = 11, model_type: str = "idefics3", size: str = "tiny") -> Path:
    """Idefics3 (SmolVLM's layout): a pixel shuffle of 2 (a quarter of the
    patches as tokens), a Llama text model."""
    z = IDEFICS3_SIZES[size]
    tokens = (z["image"] // z["patch"]) ** 2 // 4
    from mlx_vlm.models import idefics3 as family

    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                "<end_of_utterance>", "<global-img>", *rows]
    ids = _tokenizer(folder, specials, "<|im_start|>", "<end_of_utterance>")
    vocab = 400
    config = {
        "model_type": model_type,
        "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": ids["<image>"],
        "scale_factor": 2,
        "vocab_size": vocab,
        "eos_token_id": ids["<end_of_utterance>"],
        "text_config": {
            "model_type": "llama", "hidden_size": z["hidden"], "num_hidden_layers": z["layers"],
            "intermediate_size": z["ffn"], "num_attention_heads": z["heads"], "num_key_value_heads": z["kv"],
            "rms_norm_eps": 1e-5, "vocab_size": vocab,
            "rope_theta": 10000.0, "max_position_embeddings": 4096, "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "idefics3_vision", "hidden_size": z["vision"], "num_attention_heads": z["vision_heads"],
            "patch_size": z["patch"], "num_hidden_layers": z["vision_layers"], "intermediate_size": z["vision_ffn"],
            "image_size": z["image"],
        },
    }
    _build(family, config, folder, seed)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": 4096,
        "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        "chat_template": SMOLVLM_TEMPLATE,
    }))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": SMOLVLM_TEMPLATE}))
    (folder / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Idefics3Processor", "image_seq_len": tokens}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Idefics3ImageProcessor", "processor_class": "Idefics3Processor",
        "do_convert_rgb": True, "do_image_splitting": False, "do_normalize": True, "do_pad": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "max_image_size": {"longest_edge": z["image"]}, "resample": 1, "rescale_factor": 1 / 255,
        "size": {"longest_edge": z["image"]},
    }))
    return folder
