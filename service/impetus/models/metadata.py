"""What a model folder holds, read without loading it: size on disk, parameter
count (from the safetensors headers), quantization, context length, chat
template, and what the model can do (`capabilities`: tools its template
renders, reasoning markers, fill-in-the-middle tokens, images), so that
clients and the dashboard can tell before they ask. The tokenizer is not
parsed: Gemma 3's tokenizer.json is 33 MB, and a byte search for the marker
tokens finds them in milliseconds."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from impetus.models.fim import FimFormat, choose

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# The vision-language families served with images (models.vision.FAMILIES, without importing MLX).
VISION_FAMILIES = ("gemma3", "idefics3", "smolvlm")
HARMONY_MARKERS = ("<|channel|>", "<|message|>")  # gpt-oss's output channels


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
    tools: bool = False  # the chat template renders tools itself
    reasoning: str | None = None  # "think" (<think> blocks) or "harmony" (gpt-oss's channels)
    fim: FimFormat | None = None  # its fill-in-the-middle tokens (models.fim.choose)

    @property
    def fill_in_middle(self) -> bool:
        return self.fim is not None

    def fim_template(self) -> str | None:
        """Its FIM prompt as an Ollama (Go) template line, which clients such as
        Continue look for in /api/show's template (".Suffix"); None without FIM tokens."""
        if self.fim is None:
            return None
        before, after = f"{self.fim.prefix}{{{{ .Prompt }}}}", f"{self.fim.suffix}{{{{ .Suffix }}}}"
        both = before + after if self.fim.order == "psm" else after + before
        return "{{- if .Suffix }}" + both + (self.fim.middle or "") + "{{- end }}"

    def capabilities(self) -> dict:
        return {"context_length": self.context_length, "chat": self.chat_template, "tools": self.tools,
                "reasoning": self.reasoning, "fill_in_middle": self.fill_in_middle, "vision": self.vision,
                "embeddings": False}

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
    template = chat_template_text(path)
    vocabulary = b"".join((path / name).read_bytes() for name in ("tokenizer.json", "tokenizer_config.json")
                          if (path / name).is_file())
    text_config = config.get("text_config") or {}
    context = (config.get("max_position_embeddings") or text_config.get("max_position_embeddings")
               or config.get("max_seq_len"))
    return ModelMetadata(
        size_bytes=sum(size for _, size, _ in stamp),
        weights_bytes=weights_bytes,
        parameters=count_parameters(tensors, config),
        quantization=describe_quantization(config),
        context_length=int(context) if context else None,
        chat_template=template is not None,
        source=(config.get("impetus") or {}).get("source", "mlx"),
        architecture=config.get("model_type"),
        vision=bool(config.get("vision_config")) and config.get("model_type") in VISION_FAMILIES,
        tools=template is not None and _renders_tools(template),
        reasoning=_reasoning(template or "", vocabulary),
        fim=choose((config.get("impetus") or {}).get("fim") or {}, lambda token: _quoted(token) in vocabulary),
    )


def chat_template_text(path: Path) -> str | None:
    """The folder's chat template (tokenizer_config.json's, chat_template.jinja
    or a VLM's chat_template.json); None without one."""
    def read(name: str):
        try:
            return json.loads((path / name).read_text()).get("chat_template")
        except (OSError, ValueError, AttributeError):
            return None

    template = read("tokenizer_config.json")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not template and (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text()
    return template or read("chat_template.json") or None


def _renders_tools(template: str) -> bool:
    from jinja2 import Environment, TemplateError, meta

    try:
        return "tools" in meta.find_undeclared_variables(Environment().parse(template))
    except TemplateError:
        return False


def _quoted(token: str) -> bytes:
    return json.dumps(token, ensure_ascii=False).encode()


def _reasoning(template: str, vocabulary: bytes) -> str | None:
    if all(m in template or _quoted(m) in vocabulary for m in HARMONY_MARKERS):
        return "harmony"
    if "<think>" in template or _quoted("<think>") in vocabulary:
        return "think"
    return None
