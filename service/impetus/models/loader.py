"""Load an MLX model folder into memory, ready for the engine."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models.switch_layers import QuantizedSwitchLinear
from mlx_lm.utils import dequantize_model, load_model, load_tokenizer

from impetus.models import vision as vision_models

log = logging.getLogger("impetus.models")

_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
_QUANTIZED = (nn.QuantizedLinear, nn.QuantizedEmbedding, QuantizedSwitchLinear)  # MoE experts: the last


@dataclass
class LoadedModel:
    name: str
    path: Path
    model: nn.Module
    tokenizer: object  # mlx_lm TokenizerWrapper
    config: dict
    context_length: int
    weights_dtype: str
    load_seconds: float
    revision: str  # changes whenever the folder's config or weights change
    vision: vision_models.Vision | None = None  # a vision-language model's image side (models.vision)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))


def choose_weights_dtype(requested: str) -> str:
    """'auto' keeps quantized weights on a GPU and serves float32 on a CPU.

    On CPU, MLX's quantized matmul is slow and does not gain from batching
    (4-bit 135M: 4.9 tok/s alone, 5.6 at batch 16) while float32 with OpenBLAS
    gave 16 tok/s alone and 106 at batch 16.
    """
    if requested != "auto":
        return requested
    return "stored" if mx.default_device() == mx.gpu else "float32"


def cast_model(model: nn.Module, dtype_name: str) -> nn.Module:
    if dtype_name == "stored":
        return model
    dtype = _DTYPES[dtype_name]
    # Dequantize with scales and biases already in the target dtype: the
    # weights come out in that dtype directly, without a float16 rounding
    # step, and 2.5x faster on x86 CPUs, which emulate float16 arithmetic.
    for _, module in model.named_modules():
        # Only affine scales are floats (mxfp4's are uint8 exponents).
        if isinstance(module, _QUANTIZED) and module.mode == "affine":
            module.scales = module.scales.astype(dtype)
            if module.get("biases") is not None:
                module.biases = module.biases.astype(dtype)
    dequantize_model(model)
    model.update(
        tree_map(lambda a: a.astype(dtype) if mx.issubdtype(a.dtype, mx.floating) else a, model.parameters())
    )
    return model


def folder_revision(path: Path) -> str:
    """A digest of config.json and the weight files' names, sizes and times:
    cheap (no hashing of gigabytes), and different after any re-import."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load(path: Path, name: str | None = None, weights_dtype: str = "auto",
         chat_template: str | None = None) -> LoadedModel:
    """`chat_template`: an alias's own template, over the folder's (or its lack)."""
    started = time.perf_counter()
    dtype = choose_weights_dtype(weights_dtype)
    model, config, vision = _model(path, dtype)
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    template_file = path / "chat_template.json"  # where VLM folders keep it
    if chat_template is None and getattr(tokenizer, "chat_template", None) is None and template_file.is_file():
        chat_template = json.loads(template_file.read_text()).get("chat_template")
    if chat_template is not None:
        tokenizer._tokenizer.chat_template = chat_template
    mx.eval(model.parameters())
    context = int(
        config.get("max_position_embeddings")
        or (config.get("text_config") or {}).get("max_position_embeddings")
        or config.get("max_seq_len")
        or getattr(tokenizer, "model_max_length", 0)
        or 4096
    )
    return LoadedModel(
        name=name or path.name,
        path=path,
        model=model,
        tokenizer=tokenizer,
        config=config,
        context_length=context,
        weights_dtype=dtype,
        load_seconds=time.perf_counter() - started,
        revision=folder_revision(path),
        vision=vision,
    )


def _model(path: Path, dtype: str):
    """The text model the engine runs (its weights in `dtype`), the folder's
    config, and the image side of a vision-language model (None for a text
    model, or for a VLM whose family is not served with images: then its text
    half, where mlx-lm knows it)."""
    config = json.loads((path / "config.json").read_text())
    if vision_models.is_vision_folder(config):
        try:
            text, vision = vision_models.load(path, config, lambda m: cast_model(m, dtype))
            return text, config, vision
        except vision_models.VisionUnsupported as error:
            log.warning("%s: %s; loading its text model only", path.name, error)
    model, config = load_model(path)
    return cast_model(model, dtype), config, None


def warm_up(loaded: LoadedModel) -> None:
    """A short prefill and one decode step, so that the first request does not
    pay for first-touch page faults of the weights and lazy kernel setup."""
    from mlx_lm.models.cache import make_prompt_cache

    tokens = loaded.tokenizer.encode("Hello, how are you?")[:16] or [0]
    cache = make_prompt_cache(loaded.model)
    mx.eval(loaded.model(mx.array([tokens]), cache=cache))
    mx.eval(loaded.model(mx.array([tokens[-1:]]), cache=cache))
