"""Convert a llama-architecture GGUF file into an MLX model folder.

`mx.load` reads GGUF natively: Q4_0/Q4_1/Q8_0 tensors come back as MLX
affine-quantized triples (weight, scales, biases; group size 32), F16/F32 as
plain arrays. What this module adds is the rest of an mlx-community folder:

- the weights renamed to the Hugging Face/mlx-lm layout,
- config.json with per-layer quantization (a Q4_1 file keeps its embedding in
  Q8_0, so bits differ per tensor and are read from the shapes),
- tokenizer.json and tokenizer_config.json rebuilt from the GGUF metadata with
  the `tokenizers` library (transformers' own GGUF reader needs torch),
- the chat template.

GGUF's llama converter permutes the Q/K projections for interleaved rotary
embeddings, so the weights stay as they are and config sets rope_traditional.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

GGUF_GROUP_SIZE = 32

# GGUF tensor name -> mlx-lm llama parameter name ("{i}" is the block index).
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# tokenizer.ggml.pre -> the split the original Hugging Face tokenizer applied
# before byte-level BPE (as llama.cpp's llama-vocab maps them).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# GGUF token types (llama.cpp's llama_token_type).
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4

Progress = Callable[[str], None]


class GGUFImportError(ValueError):
    """The file is not a GGUF this importer can convert; the message says why."""


def _scalar(meta: dict, key: str, default=None):
    value = meta.get(key, default)
    if hasattr(value, "item"):
        return value.item()
    return value


def _mlx_name(gguf_name: str) -> str:
    base, _, suffix = gguf_name.rpartition(".")
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if match:
        index, part = match.groups()
        if part not in _LAYER_NAMES:
            raise GGUFImportError(f"unsupported tensor {gguf_name!r} in a llama GGUF")
        return f"model.layers.{index}.{_LAYER_NAMES[part]}.{suffix}"
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    raise GGUFImportError(f"unsupported tensor {gguf_name!r} in a llama GGUF")


def convert_weights(gguf_weights: dict) -> tuple[dict, dict]:
    """Rename GGUF tensors and work out the quantization of each layer.

    Returns (weights, quantization) where quantization is the config.json
    entry: a default group size/bits plus per-layer overrides, or {} when
    nothing is quantized.
    """
    weights = {_mlx_name(name): array for name, array in gguf_weights.items()}
    bits_by_layer = {}
    for name, array in weights.items():
        if name.endswith(".scales"):
            layer = name[: -len(".scales")]
            packed = weights[f"{layer}.weight"]
            # A uint32 packs 32/bits values; one scale per group of 32 values.
            values_per_row = array.shape[-1] * GGUF_GROUP_SIZE
            bits = packed.shape[-1] * 32 // values_per_row
            bits_by_layer[layer] = bits
    if not bits_by_layer:
        return weights, {}
    default_bits = Counter(bits_by_layer.values()).most_common(1)[0][0]
    quantization: dict = {"group_size": GGUF_GROUP_SIZE, "bits": default_bits}
    for layer, bits in sorted(bits_by_layer.items()):
        if bits != default_bits:
            quantization[layer] = {"group_size": GGUF_GROUP_SIZE, "bits": bits}
    return weights, quantization


def build_config(meta: dict, weights: dict, quantization: dict) -> dict:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFImportError(
            f"only llama-architecture GGUF files can be imported (this one is {arch!r})"
        )
    hidden = _scalar(meta, "llama.embedding_length")
    heads = _scalar(meta, "llama.attention.head_count")
    vocab_size = _scalar(meta, "llama.vocab_size") or len(meta["tokenizer.ggml.tokens"])
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": _scalar(meta, "llama.block_count"),
        "intermediate_size": _scalar(meta, "llama.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _scalar(meta, "llama.attention.head_count_kv", heads),
        "head_dim": _scalar(meta, "llama.attention.key_length", hidden // heads),
        "rms_norm_eps": _scalar(meta, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        "vocab_size": vocab_size,
        "rope_theta": _scalar(meta, "llama.rope.freq_base", 10000.0),
        "rope_traditional": True,
        "max_position_embeddings": _scalar(meta, "llama.context_length", 4096),
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "bos_token_id": _scalar(meta, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _scalar(meta, "tokenizer.ggml.eos_token_id"),
    }
    scaling = meta.get("llama.rope.scaling.type")
    if scaling == "linear":
        config["rope_scaling"] = {
            "type": "linear",
            "factor": _scalar(meta, "llama.rope.scaling.factor"),
        }
    if quantization:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    return config


def build_tokenizer(meta: dict):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's gpt2-style BPE vocab."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFImportError(
            f"only byte-level BPE ('gpt2') GGUF tokenizers can be rebuilt (this one is {kind!r})"
        )
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))

    pre = meta.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("llama3", "llama-bpe", "llama-v3"):
        split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    else:
        steps = []
        if pre == "smollm":
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()

    token_types = meta.get("tokenizer.ggml.token_type")
    token_types = token_types.tolist() if token_types is not None else [1] * len(tokens)
    from tokenizers import AddedToken

    added = [
        AddedToken(tokens[i], special=(kind_ == _TOKEN_CONTROL), normalized=False)
        for i, kind_ in enumerate(token_types)
        if kind_ in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)
    ]
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])

    bos_id = _scalar(meta, "tokenizer.ggml.bos_token_id")
    if _scalar(meta, "tokenizer.ggml.add_bos_token", False) and bos_id is not None:
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def build_tokenizer_config(meta: dict) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key):
        index = _scalar(meta, key)
        return tokens[index] if index is not None and index < len(tokens) else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(_scalar(meta, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(_scalar(meta, "tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": _scalar(meta, "llama.context_length", 4096),
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return {k: v for k, v in config.items() if v is not None}


def import_gguf(
    gguf_path: Path | str,
    models_dir: Path | str,
    name: str | None = None,
    progress: Progress = lambda message: None,
    overwrite: bool = False,
) -> Path:
    """Convert `gguf_path` into `models_dir/name` and return that folder.

    The folder is written under a temporary name and renamed into place at the
    end, so a failed or interrupted import never leaves a half-written model.
    """
    import mlx.core as mx

    gguf_path = Path(gguf_path)
    models_dir = Path(models_dir)
    if not gguf_path.is_file():
        raise GGUFImportError(f"no such file: {gguf_path}")
    name = name or default_model_name(gguf_path)
    target = models_dir / name
    if target.exists() and not overwrite:
        raise GGUFImportError(f"a model named {name!r} already exists at {target}")

    progress(f"reading {gguf_path.name}")
    try:
        gguf_weights, meta = mx.load(str(gguf_path), return_metadata=True)
    except Exception as error:  # mx.load raises plain exceptions for bad files
        raise GGUFImportError(
            f"cannot read {gguf_path.name} as GGUF (supported tensor types: "
            f"Q4_0, Q4_1, Q8_0, F16, F32): {error}"
        ) from error

    weights, quantization = convert_weights(gguf_weights)
    config = build_config(meta, weights, quantization)
    config["impetus"] = {"source": "gguf", "file": gguf_path.name, "name": meta.get("general.name")}
    progress(
        f"{len(weights)} tensors, {config['num_hidden_layers']} layers, "
        f"quantization {quantization.get('bits', 'none')}-bit"
    )

    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir))
    try:
        progress("writing model.safetensors")
        mx.save_safetensors(str(staging / "model.safetensors"), weights, metadata={"format": "mlx"})
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        progress("rebuilding tokenizer from GGUF metadata")
        build_tokenizer(meta).save(str(staging / "tokenizer.json"))
        (staging / "tokenizer_config.json").write_text(
            json.dumps(build_tokenizer_config(meta), indent=2)
        )
        (staging / "generation_config.json").write_text(
            json.dumps({"eos_token_id": config["eos_token_id"], "bos_token_id": config["bos_token_id"]})
        )
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"imported {name} -> {target}")
    return target


def default_model_name(gguf_path: Path) -> str:
    """'SmolLM2-135M-Instruct.Q4_1.gguf' -> 'smollm2-135m-instruct-q4_1'."""
    stem = gguf_path.name.removesuffix(".gguf")
    return re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-")
