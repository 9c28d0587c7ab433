"""What a model folder holds, read without loading it: size on disk, parameter
count (from the safetensors headers), quantization, context length, chat template."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# The vision-language families served with images (models.vision.FAMILIES, without importing MLX).
VISION_FAMILIES = ("gemma3", "idefics3", "smolvlm")


@dataclass(frozen=True)
class ModelMetadata:
    size_bytes: int  # every file in the folder
    weights_bytes: int  # the safetensors files
    parameters: int
    quantization: str  # "none", "4-bit", "4-bit (embeddings 8-bit)"...
    context_length: int | None
    chat_template: bool
    source: str  # "mlx" or "gguf" (imported)
    architecture: str | None
    vision: bool = False  # takes images (a vision-language model of a family served with them, models.vision)

    def memory_estimate(self, weights_dtype: str) -> int:
        """Bytes of weights once loaded: the stored size, or every parameter in
        the dtype they are cast to (MLX reads safetensors by memory mapping)."""
        if weights_dtype in _DTYPE_BYTES:
            return self.parameters * _DTYPE_BYTES[weights_dtype]
        return self.weights_bytes

    def as_dict(self) -> dict:
        return asdict(self)


def safetensors_header(path: Path) -> dict:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def count_parameters(tensors: dict, config: dict) -> int:
    """Quantized weights are packed into uint32: count them from their scales
    (one per group of `group_size` weights); their scales and biases are not
    parameters of the model."""
    quant = config.get("quantization") or {}
    quantized = {name[: -len(".weight")] for name, info in tensors.items()
                 if name.endswith(".weight") and info["dtype"] == "U32" and name[:-7] + ".scales" in tensors}
    total = 0
    for name, info in tensors.items():
        layer, _, kind = name.rpartition(".")
        if layer in quantized:
            if kind == "weight":
                group = (quant.get(layer) if isinstance(quant.get(layer), dict) else quant).get("group_size", 64)
                total += math.prod(tensors[f"{layer}.scales"]["shape"]) * int(group)
            continue
        total += math.prod(info["shape"])
    return total


def describe_quantization(config: dict) -> str:
    quant = config.get("quantization")
    if not quant:
        return "none"
    text = f"{quant.get('bits', '?')}-bit"
    overrides = {k: v for k, v in quant.items() if isinstance(v, dict) and v.get("bits") != quant.get("bits")}
    if list(overrides) == ["model.embed_tokens"]:
        text += f" (embeddings {overrides['model.embed_tokens']['bits']}-bit)"
    elif overrides:
        text += " (mixed)"
    return text


def read_metadata(path: Path) -> ModelMetadata:
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir()) if f.is_file())
    return _read(path, stamp)


@lru_cache(maxsize=64)
def _read(path: Path, stamp: tuple) -> ModelMetadata:
    config = json.loads((path / "config.json").read_text())
    tensors = {}
    weights_bytes = 0
    for weights in sorted(path.glob("*.safetensors")):
        tensors.update(safetensors_header(weights))
        weights_bytes += weights.stat().st_size
    template = False
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.is_file():
        template = bool(json.loads(tokenizer_config.read_text()).get("chat_template"))
    template = template or (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file()
    text_config = config.get("text_config") or {}
    context = (config.get("max_position_embeddings") or text_config.get("max_position_embeddings")
               or config.get("max_seq_len"))
    return ModelMetadata(
        size_bytes=sum(size for _, size, _ in stamp),
        weights_bytes=weights_bytes,
        parameters=count_parameters(tensors, config),
        quantization=describe_quantization(config),
        context_length=int(context) if context else None,
        chat_template=template,
        source=(config.get("impetus") or {}).get("source", "mlx"),
        architecture=config.get("model_type"),
        vision=bool(config.get("vision_config")) and config.get("model_type") in VISION_FAMILIES,
    )
