"""GGUF architectures onto mlx-lm's model classes: tensor names, config.json,
and the few weight changes llama.cpp's converters made on the way in.

What differs between them, as llama.cpp's `convert_hf_to_gguf.py` writes them:

- `llama` (and `mistral`, llama-shaped): Q and K rows are permuted for
  llama.cpp's interleaved rotary embedding; the weights stay as they are and
  config sets `rope_traditional`, which is the same rotation. Llama 3.1's
  `rope_freqs` are matched to the `llama3` scaling that produced them.
- `qwen2`: biases on Q, K and V; half-split (NeoX) rotary, no permutation.
- `qwen3`: RMS norms on Q and K per head; explicit head size.
- `phi3`: Q, K and V fused in `attn_qkv`, gate and up fused in `ffn_up`, as
  mlx-lm's `phi3` keeps them; partial rotary and long-rope factors.
- `gemma3`: every norm weight was written as 1 + w (Gemma's RMSNorm scales by
  1 + w): 1 is taken off again, since mlx-lm's `gemma3_text` adds it. Four
  norms per block, Q/K norms, sliding-window layers (5 of every 6, window from
  the file, local rotary base 10,000 as llama.cpp fixes it), query scaling by
  the head size (by hidden/heads for the 27B, as llama.cpp does).
- `qwen3moe`: qwen3's attention; every block's FFN is a mixture of experts:
  a router (`ffn_gate_inp`) and the experts' gate, up and down stacked in
  3-D tensors, as mlx-lm's `SwitchGLU` keeps them. Softmax over all experts,
  the top k, their weights normalized (llama.cpp's `norm_w`, Qwen's
  `norm_topk_prob`).
- `gpt-oss` (mlx-lm's `gpt_oss`): biases on Q, K, V, O, router and experts;
  a learned attention sink per head; sliding-window attention on even
  layers (llama.cpp's pattern 2); top-k on the router's logits, then
  softmax over those k; the experts' SwiGLU clamped at 7 with alpha 1.702
  (`swiglu_oai`). Its experts ship as MXFP4 (`convert` repacks them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from impetus.models.gguf.reader import GGUFFile, GGUFImportError

_LLAMA_BLOCK = {
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
_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_GEMMA3_BLOCK = {
    **_LLAMA_BLOCK,
    **_QK_NORMS,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_PHI3_BLOCK = {
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_up": "mlp.gate_up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_MOE = {"ffn_gate_inp": "mlp.gate", "ffn_gate_exps": "mlp.switch_mlp.gate_proj",
        "ffn_up_exps": "mlp.switch_mlp.up_proj", "ffn_down_exps": "mlp.switch_mlp.down_proj"}
_QWEN3MOE_BLOCK = {**{k: v for k, v in _LLAMA_BLOCK.items() if not k.startswith("ffn_") or k == "ffn_norm"},
                   **_QK_NORMS, **_MOE}
_GPT_OSS_BLOCK = {
    **{k: v for k, v in _LLAMA_BLOCK.items() if k.startswith("attn_")},
    "post_attention_norm": "post_attention_layernorm",
    "attn_sinks": "self_attn.sinks",  # a parameter of its own: no ".weight"
    "ffn_gate_inp": "mlp.router",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
}
_BARE = ("self_attn.sinks",)  # mlx-lm parameters that are not a module's weight
_GLOBALS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Tensors llama.cpp keeps for itself: folded into config.json, not weights.
_CONFIG_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


@dataclass(frozen=True)
class Architecture:
    name: str  # general.architecture
    block: dict[str, str]
    config: Callable[[GGUFFile], dict]
    norm_offset: float = 0.0  # taken off every norm weight
    globals: dict[str, str] = field(default_factory=lambda: dict(_GLOBALS))

    def weight_name(self, gguf_name: str) -> str | None:
        """The mlx-lm parameter for a GGUF tensor; None for config-only tensors."""
        if gguf_name in _CONFIG_TENSORS:
            return None
        base, _, suffix = gguf_name.rpartition(".")
        match = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
        if match and match.group(2) in self.block:
            target = self.block[match.group(2)]
            return f"model.layers.{match.group(1)}.{target}" + ("" if target in _BARE else f".{suffix}")
        if base in self.globals:
            return f"{self.globals[base]}.{suffix}"
        raise GGUFImportError(f"unsupported tensor {gguf_name!r} in a {self.name} GGUF")

    def transform(self, gguf_name: str, values: np.ndarray) -> np.ndarray:
        if self.norm_offset and gguf_name.endswith("norm.weight"):
            return values - self.norm_offset
        return values


def _common(f: GGUFFile, model_type: str) -> dict:
    hidden = int(f.get("embedding_length"))
    heads = int(f.get("attention.head_count"))
    config = {
        "model_type": model_type,
        "hidden_size": hidden,
        "num_hidden_layers": int(f.get("block_count")),
        # An all-MoE model's file may name only its experts' size.
        "intermediate_size": int(f.get("feed_forward_length", f.get("expert_feed_forward_length", 0))),
        "num_attention_heads": heads,
        "num_key_value_heads": int(f.get("attention.head_count_kv", heads)),
        "head_dim": int(f.get("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(f.get("attention.layer_norm_rms_epsilon", 1e-6)),
        "vocab_size": int(f.get("vocab_size") or f.tensors["token_embd.weight"].shape[0]),
        "rope_theta": float(f.get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(f.get("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in f.tensors,
    }
    if f.get("rope.scaling.type") == "linear" and f.get("rope.scaling.factor"):
        config["rope_scaling"] = {"type": "linear", "rope_type": "linear",
                                  "factor": float(f.get("rope.scaling.factor"))}
    return config


def llama3_rope_factors(dims: int, base: float, factor: float, low: float, high: float, original: int):
    """The `rope_freqs` llama.cpp writes for Llama 3.1's rope scaling."""
    out = []
    for i in range(0, dims, 2):
        wavelength = 2 * math.pi * base ** (i / dims)
        if wavelength < original / high:
            out.append(1.0)
        elif wavelength > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _llama(f: GGUFFile) -> dict:
    config = _common(f, "llama")
    config["rope_traditional"] = True
    config["attention_bias"] = "blk.0.attn_q.bias" in f.tensors
    if "rope_freqs.weight" in f.tensors:
        config["rope_scaling"] = _llama3_scaling(f, config)
    return config


def _llama3_scaling(f: GGUFFile, config: dict) -> dict:
    freqs = f.tensors["rope_freqs.weight"].dequantize().ravel()
    factor = float(freqs.max())
    dims = int(f.get("rope.dimension_count", config["head_dim"]))
    for low, high, original in ((1.0, 4.0, 8192), (1.0, 4.0, 4096), (1.0, 4.0, 2048)):
        expected = llama3_rope_factors(dims, config["rope_theta"], factor, low, high, original)
        if expected.shape == freqs.shape and np.allclose(expected, freqs, rtol=1e-4):
            return {"rope_type": "llama3", "type": "llama3", "factor": factor, "low_freq_factor": low,
                    "high_freq_factor": high, "original_max_position_embeddings": original}
    raise GGUFImportError("this llama GGUF has rope_freqs that match no known Llama 3 rope scaling")


def _qwen2(f: GGUFFile) -> dict:
    config = _common(f, "qwen2")
    if config["head_dim"] * config["num_attention_heads"] != config["hidden_size"]:
        raise GGUFImportError("a qwen2 GGUF whose head size is not hidden/heads is not supported")
    config.pop("head_dim")
    config["rope_traditional"] = False
    return config


def _qwen3(f: GGUFFile) -> dict:
    return _common(f, "qwen3")


def _phi3(f: GGUFFile) -> dict:
    config = _common(f, "phi3")
    head_dim = config.pop("head_dim")
    if head_dim * config["num_attention_heads"] != config["hidden_size"]:
        raise GGUFImportError("a phi3 GGUF whose head size is not hidden/heads is not supported")
    rope_dims = int(f.get("rope.dimension_count", head_dim))
    config["partial_rotary_factor"] = rope_dims / head_dim
    config["rope_traditional"] = False
    original = f.get("rope.scaling.original_context_length")
    if original:
        config["original_max_position_embeddings"] = int(original)
    if "rope_factors_long.weight" in f.tensors:
        config["rope_scaling"] = {
            "type": "longrope",
            "long_factor": f.tensors["rope_factors_long.weight"].dequantize().ravel().tolist(),
            "short_factor": f.tensors["rope_factors_short.weight"].dequantize().ravel().tolist(),
        }
        config.setdefault("original_max_position_embeddings", 4096)
    return config


def _gemma3(f: GGUFFile) -> dict:
    config = _common(f, "gemma3_text")
    config["architectures"] = ["Gemma3ForCausalLM"]
    big = config["num_hidden_layers"] == 62  # the 27B scales queries by hidden/heads
    config["query_pre_attn_scalar"] = (config["hidden_size"] // config["num_attention_heads"]
                                       if big else config["head_dim"])
    config["sliding_window"] = int(f.get("attention.sliding_window", 4096))
    config["sliding_window_pattern"] = 6
    config["rope_local_base_freq"] = 10000.0
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if f.get(key):
            raise GGUFImportError(f"this gemma3 GGUF sets {key}, which mlx-lm's gemma3_text does not apply")
    return config


def _experts(f: GGUFFile, config: dict) -> dict:
    experts, used = f.get("expert_count"), f.get("expert_used_count")
    if not experts or not used:
        raise GGUFImportError(f"this {f.architecture} GGUF names no expert_count / expert_used_count")
    return {**config, "num_experts_per_tok": int(used),
            "moe_intermediate_size": int(f.get("expert_feed_forward_length", config["intermediate_size"]))}


def _qwen3moe(f: GGUFFile) -> dict:
    config = _experts(f, _common(f, "qwen3_moe"))
    if "blk.0.ffn_gate_shexp.weight" in f.tensors:
        raise GGUFImportError("this qwen3moe GGUF has shared experts, which mlx-lm's qwen3_moe does not run")
    config.update(num_experts=int(f.get("expert_count")), decoder_sparse_step=1, mlp_only_layers=[],
                  norm_topk_prob=True)
    return config


def _gpt_oss(f: GGUFFile) -> dict:
    config = _experts(f, _common(f, "gpt_oss"))
    layers = config["num_hidden_layers"]
    config.update(num_local_experts=int(f.get("expert_count")),
                  intermediate_size=config.pop("moe_intermediate_size"),
                  sliding_window=int(f.get("attention.sliding_window", 128)),
                  layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)])
    if f.get("rope.scaling.type") == "yarn":
        config["rope_scaling"] = {"rope_type": "yarn", "factor": float(f.get("rope.scaling.factor")),
                                  "original_max_position_embeddings":
                                      int(f.get("rope.scaling.original_context_length", 4096)),
                                  "beta_fast": 32.0, "beta_slow": 1.0}
    if "output.weight" not in f.tensors:
        raise GGUFImportError("this gpt-oss GGUF has no output.weight: mlx-lm's gpt_oss needs its own lm_head")
    return config


ARCHITECTURES = {
    "llama": Architecture("llama", _LLAMA_BLOCK, _llama),
    "mistral": Architecture("mistral", _LLAMA_BLOCK, _llama),
    "qwen2": Architecture("qwen2", _LLAMA_BLOCK, _qwen2),
    "qwen3": Architecture("qwen3", {**_LLAMA_BLOCK, **_QK_NORMS}, _qwen3),
    "phi3": Architecture("phi3", _PHI3_BLOCK, _phi3),
    "gemma3": Architecture("gemma3", _GEMMA3_BLOCK, _gemma3, norm_offset=1.0),
    "qwen3moe": Architecture("qwen3moe", _QWEN3MOE_BLOCK, _qwen3moe),
    "gpt-oss": Architecture("gpt-oss", _GPT_OSS_BLOCK, _gpt_oss),
}


def architecture(f: GGUFFile) -> Architecture:
    arch = f.architecture
    if arch not in ARCHITECTURES:
        raise GGUFImportError(f"architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]
