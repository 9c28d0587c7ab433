"""A reference forward pass over a GGUF file, in NumPy, as llama.cpp's graphs
compute it: tensors dequantized by gguf-py and used as they are stored (Gemma's
norms with their +1, llama's permuted Q/K with interleaved rotary). It shares
no code with the importer, so the importer's renaming, norm offsets, rotary
choice and config are all checked against it."""

from __future__ import annotations

import math

import numpy as np

# llama.cpp's rotary style per architecture: NORM rotates adjacent pairs, NEOX the two halves.
ROPE_NEOX = {"llama": False, "mistral": False, "qwen2": True, "qwen3": True, "phi3": True, "gemma3": True,
             "qwen3moe": True, "gpt-oss": True}


class Reference:
    def __init__(self, path, dtype=np.float64):
        import gguf

        from impetus.models.gguf.reader import open_reader

        reader = open_reader(path)  # gguf-py's reader, over a plain view of the mapped file
        self.meta = {k: f.contents() for k, f in reader.fields.items()}
        self.arch = self.meta["general.architecture"]
        self.t = {}
        self._computed: dict[tuple[int, ...], np.ndarray] = {}  # tokens -> logits: a greedy run asked again
        for tensor in reader.tensors:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            self.t[tensor.name] = np.asarray(values, dtype=dtype).reshape(shape)

    def hp(self, key, default=None):
        return self.meta.get(f"{self.arch}.{key}", default)

    def logits(self, tokens: list[int]) -> np.ndarray:
        """The logits at every position; the same tokens are computed once
        (tests compare several imports of one file with the same prompt)."""
        key = tuple(int(token) for token in tokens)
        if key not in self._computed:
            self._computed[key] = self._forward(list(key))
            self._computed[key].flags.writeable = False  # shared by every caller
        return self._computed[key]

    def _forward(self, tokens: list[int]) -> np.ndarray:
        t, arch = self.t, self.arch
        hidden = self.hp("embedding_length")
        heads = self.hp("attention.head_count")
        kv_heads = self.hp("attention.head_count_kv", heads)
        head_dim = self.hp("attention.key_length", hidden // heads)
        eps = self.hp("attention.layer_norm_rms_epsilon")
        rope_dims = self.hp("rope.dimension_count", head_dim)
        n = len(tokens)
        x = t["token_embd.weight"][tokens]
        if arch == "gemma3":  # in bfloat16, as mlx-lm's gemma3_text and Hugging Face's Gemma 3 round it
            x = x * bfloat16(math.sqrt(hidden))
        mask = np.triu(np.full((n, n), -np.inf), 1)
        for i in range(self.hp("block_count")):
            b = f"blk.{i}."
            h = rms(x, eps) * t[b + "attn_norm.weight"]
            if b + "attn_qkv.weight" in t:
                qkv = h @ t[b + "attn_qkv.weight"].T
                q, k, v = np.split(qkv, [heads * head_dim, (heads + kv_heads) * head_dim], axis=-1)
            else:
                q, k, v = (h @ t[b + f"attn_{p}.weight"].T + t.get(b + f"attn_{p}.bias", 0) for p in "qkv")
            q = q.reshape(n, heads, head_dim)
            k = k.reshape(n, kv_heads, head_dim)
            v = v.reshape(n, kv_heads, head_dim)
            if b + "attn_q_norm.weight" in t:
                q = rms(q, eps) * t[b + "attn_q_norm.weight"]
                k = rms(k, eps) * t[b + "attn_k_norm.weight"]
            base = self.hp("rope.freq_base", 10000.0)
            # Gemma 3: five sliding-window layers, then a global one; gpt-oss: even layers slide.
            sliding = (arch == "gemma3" and (i + 1) % 6 != 0) or (arch == "gpt-oss" and i % 2 == 0)
            if sliding and arch == "gemma3":
                base = 10000.0
            freqs = t.get("rope_freqs.weight")
            yarn = self._yarn(base, rope_dims) if self.hp("rope.scaling.type") == "yarn" else None
            q = rope(q, base, rope_dims, ROPE_NEOX[arch], freqs, yarn)
            k = rope(k, base, rope_dims, ROPE_NEOX[arch], freqs, yarn)
            k = np.repeat(k, heads // kv_heads, axis=1)
            v = np.repeat(v, heads // kv_heads, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim) + mask
            if sliding:
                window = self.hp("attention.sliding_window")
                far = np.tril(np.ones((n, n), bool), -window)
                scores = np.where(far, -np.inf, scores)
            if b + "attn_sinks.weight" in t:  # one more logit per head in the softmax, attending to nothing
                sinks = np.broadcast_to(t[b + "attn_sinks.weight"][:, None, None], (heads, n, 1))
                weights = softmax(np.concatenate([scores, sinks], axis=-1))[..., :n]
            else:
                weights = softmax(scores)
            attn = np.einsum("hqk,khd->qhd", weights, v).reshape(n, heads * head_dim)
            out = attn @ t[b + "attn_output.weight"].T + t.get(b + "attn_output.bias", 0)
            if arch == "gemma3":
                out = rms(out, eps) * t[b + "post_attention_norm.weight"]
            x = x + out
            # gpt-oss names its FFN's input norm post_attention_norm.
            h = rms(x, eps) * t[b + ("ffn_norm.weight" if arch != "gpt-oss" else "post_attention_norm.weight")]
            if b + "ffn_gate_inp.weight" in t:
                x = x + self._experts(b, h)
                continue
            if b + "ffn_gate.weight" in t:
                gate, up = h @ t[b + "ffn_gate.weight"].T, h @ t[b + "ffn_up.weight"].T
            else:  # phi3: gate and up fused
                gate, up = np.split(h @ t[b + "ffn_up.weight"].T, 2, axis=-1)
            act = gelu_tanh(gate) if arch == "gemma3" else gate / (1 + np.exp(-gate))
            out = (act * up) @ t[b + "ffn_down.weight"].T
            if arch == "gemma3":
                out = rms(out, eps) * t[b + "post_ffw_norm.weight"]
            x = x + out
        x = rms(x, eps) * t["output_norm.weight"]
        return x @ t.get("output.weight", t["token_embd.weight"]).T


    def _yarn(self, base: float, dims: int) -> tuple[np.ndarray, float]:
        """ggml's rope_yarn: each pair's frequency between the original
        (extrapolated) and the one divided by the factor (interpolated), by a
        ramp over the correction dims (beta_fast 32, beta_slow 1), and the
        rotation scaled by 1 + 0.1 ln(factor)."""
        factor, original = self.hp("rope.scaling.factor"), self.hp("rope.scaling.original_context_length")

        def corr_dim(rotations):
            return dims * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = max(0, math.floor(corr_dim(32))), min(dims - 1, math.ceil(corr_dim(1)))
        pairs = np.arange(dims // 2)
        ramp = 1 - np.clip((pairs - low) / max(0.001, high - low), 0, 1)
        extrapolated = base ** (-2 * pairs / dims)
        inverse = extrapolated / factor * (1 - ramp) + extrapolated * ramp
        return inverse, 1 + 0.1 * math.log(factor)

    def _experts(self, b: str, h: np.ndarray) -> np.ndarray:
        """llama.cpp's build_moe_ffn: qwen3moe softmaxes the router's logits,
        takes the top k and renormalizes their weights; gpt-oss takes the top k
        logits and softmaxes those. Each token's chosen experts, one by one."""
        t, k = self.t, self.hp("expert_used_count")
        logits = h @ t[b + "ffn_gate_inp.weight"].T + t.get(b + "ffn_gate_inp.bias", 0)
        out = np.zeros_like(h)
        for row in range(h.shape[0]):
            chosen = np.argsort(-logits[row], kind="stable")[:k]
            if self.arch == "gpt-oss":
                weights = softmax(logits[row][chosen])
            else:
                probabilities = softmax(logits[row])
                weights = probabilities[chosen] / probabilities[chosen].sum()
            for expert, weight in zip(chosen, weights):
                def part(name, x):
                    return x @ t[b + f"ffn_{name}_exps.weight"][expert].T + \
                        (t[b + f"ffn_{name}_exps.bias"][expert] if b + f"ffn_{name}_exps.bias" in t else 0)
                gate, up = part("gate", h[row]), part("up", h[row])
                if self.arch == "gpt-oss":  # swiglu_oai: the gate clamped above, the linear part both ways, + 1
                    gate, up = np.minimum(gate, 7.0), np.clip(up, -7.0, 7.0)
                    act = gate / (1 + np.exp(-1.702 * gate)) * (up + 1)
                else:
                    act = gate / (1 + np.exp(-gate)) * up
                out[row] += weight * part("down", act)
        return out


def bfloat16(value: float) -> float:
    bits = np.array([value], dtype=np.float32).view(np.uint32)[0]
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def rms(x, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def rope(x, base, dims, neox, freq_factors=None, yarn=None):
    """`yarn`: (each pair's frequency, the scale of the rotation), from Reference._yarn."""
    n = x.shape[0]
    inv = base ** (-np.arange(0, dims, 2) / dims)
    if freq_factors is not None:
        inv = inv / freq_factors
    scale = 1.0
    if yarn is not None:
        inv, scale = yarn
    angles = np.arange(n)[:, None] * inv[None, :]  # (n, dims/2)
    cos, sin = np.cos(angles)[:, None, :] * scale, np.sin(angles)[:, None, :] * scale
    rotated, rest = x[..., :dims], x[..., dims:]
    if neox:
        a, b = rotated[..., : dims // 2], rotated[..., dims // 2:]
        out = np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    else:
        a, b = rotated[..., 0::2], rotated[..., 1::2]
        out = np.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(rotated.shape)
    return np.concatenate([out, rest], axis=-1)
