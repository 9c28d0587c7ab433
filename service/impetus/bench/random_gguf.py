"""Write small random-weight GGUF files of each supported architecture with
gguf-py (ggml's own writer): the importer's tests (tests/tiny_gguf.py) and the
benchmarks that need a GGUF both llama.cpp and Impetus can serve
(`autocomplete`: a code model with fill-in-the-middle tokens, `write_coder`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A reasoning template, as Qwen3's: the answer opens a think block, or an
# empty one when enable_thinking is false.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


def byte_to_char() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte value (" " is "Ġ")."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (printable bytes first)."""
    return list(byte_to_char().values())


def write_tiny_llama(path: Path, weight_type: str, tied: bool = True, seed: int = 0,
                     thinking: bool = False) -> Path:
    """`thinking`: with <think> and </think> tokens and THINKING_TEMPLATE."""
    return write_tiny(path, "llama", weight_type, tied=tied, seed=seed, thinking=thinking)


SPM_PIECES = ["▁", "t", "h", "e", "l", "o", "r", "▁t", "he", "▁the", "ll", "ell", "▁h", "▁he", "▁hell",
              "▁hello", "er", "▁th", "▁there", "é", "▁é"]


def _spm_vocab():
    """A SentencePiece vocabulary as llama.cpp stores it: control tokens, 256
    byte pieces, then normal pieces with scores (higher merges first)."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [3, 3, 3, 2] + [6] * 256
    scores = [0.0] * len(tokens)
    for rank, piece in enumerate(SPM_PIECES):
        tokens.append(piece)
        types.append(1)
        scores.append(-float(rank))
    tokens += ["<start_of_turn>", "<end_of_turn>", "\n\n"]
    types += [3, 3, 4]
    scores += [0.0, 0.0, 0.0]
    return tokens, types, scores


# Per architecture: GGUF block tensors beyond llama's, and hyperparameters.
ARCHES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3", "qwen3moe", "gpt-oss")
MOE = ("qwen3moe", "gpt-oss")
EXPERTS, EXPERTS_USED, EXPERT_FFN = 4, 2, 32


def write_tiny(path: Path, arch: str = "llama", weight_type: str = "F32", tied: bool = True, seed: int = 0,
               thinking: bool = False, tokenizer: str | None = None, chat_template: bool = True,
               meta: dict | None = None, expert_type: str | None = None, extra_tokens=(),
               template: str | None = None, weights=None, context: int = 256,
               size: tuple[int, int, int, int, int] = (64, 4, 2, 128, 2)) -> Path:
    """A random-weight model of `arch` in `weight_type` (any type gguf-py can
    quantize), with a byte-level BPE ("gpt2") or SentencePiece ("llama")
    vocabulary (default: SentencePiece for gemma3, BPE for the rest); `meta`:
    more metadata (float or int values), as `general.sampling.temp`;
    `expert_type`: the MoE experts' type, when not `weight_type` (gpt-oss
    ships MXFP4 experts beside other types); `extra_tokens`: (text, GGUF
    token type) pairs added to the vocabulary; `template`: the chat template;
    `weights(name, array, tokens)`: each tensor's values, to be changed before
    it is written (tests/tiny_harmony.py scripts a model's output so);
    `size`: hidden, heads, KV heads, FFN width and layers (Gemma keeps its six)."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    qtype = Q[weight_type]
    rng = np.random.default_rng(seed)
    tokenizer = tokenizer or ("llama" if arch == "gemma3" else "gpt2")
    hidden, heads, kv_heads, ffn, layers = size
    layers = 6 if arch == "gemma3" else layers  # Gemma: five sliding-window layers, then a global one
    head_dim = 32 if arch in ("qwen3", "gemma3", "qwen3moe", "gpt-oss") and hidden == 64 else hidden // heads
    tied = tied and arch != "gpt-oss"  # gpt-oss has its own output matrix

    if tokenizer == "gpt2":
        merges = ["Ġ t", "h e", "Ġt he", "l l", "e ll"]
        tokens = byte_level_alphabet() + ["Ġt", "he", "Ġthe", "ll", "ell", "<|im_start|>", "<|im_end|>"]
        token_types = [1] * (len(tokens) - 2) + [3, 3]
        scores = None
    else:
        tokens, token_types, scores = _spm_vocab()
        tokens += ["<|im_start|>", "<|im_end|>"]
        token_types += [3, 3]
        scores += [0.0, 0.0]
    for text, kind in extra_tokens:
        tokens.append(text)
        token_types.append(kind)
        scores = scores + [0.0] if scores is not None else None
    if thinking:
        tokens += ["<think>", "</think>"]
        token_types += [4, 4]  # user-defined: added tokens that decode as their text
        scores = scores + [0.0, 0.0] if scores is not None else None
    vocab = len(tokens)
    while vocab % 32:  # quantized rows need whole blocks of 32
        tokens.append(f"<pad{vocab}>")
        token_types.append(3)
        if scores is not None:
            scores.append(0.0)
        vocab += 1

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(layers)
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5 if arch != "gemma3" else 1e-6)
    writer.add_rope_freq_base(10000.0 if arch != "gemma3" else 1e6)
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch == "phi3":
        writer.add_rope_dimension_count(head_dim // 2)  # partial rotary
    if arch in ("gemma3", "gpt-oss"):
        writer.add_sliding_window(4)  # shorter than the tests' prompts
    if arch == "gpt-oss":  # YaRN, as gpt-oss ships (factor 32 over 4,096 there)
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(4.0)
        writer.add_rope_scaling_orig_ctx_len(32)
    if arch in MOE:
        writer.add_expert_count(EXPERTS)
        writer.add_expert_used_count(EXPERTS_USED)
        writer.add_expert_feed_forward_length(EXPERT_FFN)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model(tokenizer)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    if scores is not None:
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(arch != "gemma3")
    else:
        writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>" if tokenizer == "gpt2" else "<bos>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(tokenizer == "llama")
    if chat_template:
        writer.add_chat_template(template or (THINKING_TEMPLATE if thinking else CHAT_TEMPLATE))
    for key, value in (meta or {}).items():  # token ids are uint32, as llama.cpp reads them
        add = writer.add_float32 if isinstance(value, float) else writer.add_uint32 if key.endswith(
            "_token_id") else writer.add_int32
        add(key, value)

    def add(name, shape, scale=0.5, kind=None, offset=0.0):
        array = (rng.standard_normal(shape) * scale + offset).astype(np.float32)
        if weights is not None:
            array = np.asarray(weights(name, array, tokens), dtype=np.float32)
        kind = qtype if kind is None else kind
        if kind == Q.F32:
            writer.add_tensor(name, array)
        elif kind == Q.F16:
            writer.add_tensor(name, array.astype(np.float16))
        elif kind == Q.IQ4_NL:  # gguf-py cannot write IQ types: random blocks (a scale, 32 4-bit indices)
            blocks = array.size // 32
            scale = np.full((blocks, 1), scale / 8, dtype=np.float16).view(np.uint8)
            indices = rng.integers(0, 256, size=(blocks, 16), dtype=np.uint8)
            raw = np.concatenate([scale, indices], axis=1).reshape(*array.shape[:-1], -1)
            writer.add_tensor(name, raw, raw_dtype=kind)
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)

    # Gemma's converter stores norms as 1 + w: centre them on 1, as real files are.
    norm = dict(kind=Q.F32, scale=0.1, offset=1.0)
    add("token_embd.weight", (vocab, hidden), scale=1.0)
    for i in range(layers):
        b = f"blk.{i}."
        add(b + "attn_norm.weight", (hidden,), **norm)
        add(b + ("post_attention_norm.weight" if arch == "gpt-oss" else "ffn_norm.weight"), (hidden,), **norm)
        if arch == "phi3":
            add(b + "attn_qkv.weight", ((heads + 2 * kv_heads) * head_dim, hidden))
        else:
            add(b + "attn_q.weight", (heads * head_dim, hidden))
            add(b + "attn_k.weight", (kv_heads * head_dim, hidden))
            add(b + "attn_v.weight", (kv_heads * head_dim, hidden))
        if arch in ("qwen2", "gpt-oss"):
            add(b + "attn_q.bias", (heads * head_dim,), kind=Q.F32)
            add(b + "attn_k.bias", (kv_heads * head_dim,), kind=Q.F32)
            add(b + "attn_v.bias", (kv_heads * head_dim,), kind=Q.F32)
        if arch in ("qwen3", "gemma3", "qwen3moe"):
            add(b + "attn_q_norm.weight", (head_dim,), **norm)
            add(b + "attn_k_norm.weight", (head_dim,), **norm)
        if arch == "gemma3":
            add(b + "post_attention_norm.weight", (hidden,), **norm)
            add(b + "post_ffw_norm.weight", (hidden,), **norm)
        add(b + "attn_output.weight", (hidden, heads * head_dim))
        if arch == "gpt-oss":
            add(b + "attn_output.bias", (hidden,), kind=Q.F32)
            add(b + "attn_sinks.weight", (heads,), kind=Q.F32)
        if arch in MOE:
            experts = Q[expert_type] if expert_type else None
            add(b + "ffn_gate_inp.weight", (EXPERTS, hidden), kind=Q.F32)
            for name, shape in (("gate", (EXPERTS, EXPERT_FFN, hidden)), ("up", (EXPERTS, EXPERT_FFN, hidden)),
                                ("down", (EXPERTS, hidden, EXPERT_FFN))):
                add(b + f"ffn_{name}_exps.weight", shape, kind=experts)
                if arch == "gpt-oss":
                    add(b + f"ffn_{name}_exps.bias", shape[:2], kind=Q.F32)
            if arch == "gpt-oss":
                add(b + "ffn_gate_inp.bias", (EXPERTS,), kind=Q.F32)
        elif arch == "phi3":
            add(b + "ffn_up.weight", (2 * ffn, hidden))
        else:
            add(b + "ffn_gate.weight", (ffn, hidden))
            add(b + "ffn_up.weight", (ffn, hidden))
        if arch not in MOE:
            add(b + "ffn_down.weight", (hidden, ffn))
    add("output_norm.weight", (hidden,), **norm)
    if not tied:
        add("output.weight", (vocab, hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# Fill-in-the-middle markers of a Qwen2.5-Coder-like model (named in the GGUF as llama.cpp's converter
# names them: tokenizer.ggml.fim_*_token_id) and of a Codestral-like one (found by the vocabulary alone).
QWEN_FIM = ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
QWEN_FIM_KEYS = ["fim_pre", "fim_mid", "fim_suf", "fim_pad", "fim_rep", "fim_sep"]
CODESTRAL_FIM = ["[PREFIX]", "[SUFFIX]"]


def write_coder(path: Path, family: str = "qwen", size: tuple[int, int, int, int, int] = (64, 4, 2, 128, 2),
                context: int = 256, seed: int = 0) -> Path:
    """A random qwen2 code model with fill-in-the-middle tokens."""
    markers = QWEN_FIM if family == "qwen" else CODESTRAL_FIM
    first = len(byte_level_alphabet()) + 7  # write_tiny's BPE vocabulary: the bytes, 5 merges, 2 chat tokens
    meta = {f"tokenizer.ggml.{key}_token_id": first + i for i, key in enumerate(QWEN_FIM_KEYS)} \
        if family == "qwen" else {}
    return write_tiny(path, "qwen2", "F32", extra_tokens=[(m, 3) for m in markers], meta=meta, size=size,
                      context=context, seed=seed)
